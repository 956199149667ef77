"""Architectures qfarm has proven, method by method: each either works
(quantized_fraction ≥ 0.95 from the artifact, routers untouched) or is
refused at submit, from config.json, with the reason and the methods that
do work. tests/test_architectures.py runs every (architecture, method) pair
on a tiny random checkpoint and asserts that what happens is what this table
claims; `qfarm methods --architectures` and the README print it.

An architecture not listed is accepted: the job measures what it quantized
like any other and fails where less than 95 % of the weights were reached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Method labels as `qfarm compare --methods` spells them: NAME or NAME:FORMAT.
METHOD_LABELS = ("rtn", "gptq", "gptq:gptq", "awq", "awq:awq", "nf4", "fp4", "int8", "fp8")

# Layers every MoE keeps in full precision, whatever the architecture calls
# its block: the router (`gate`, `router`) and a shared expert's gate. vLLM
# loads them unquantized, and they are a sliver of the weights.
KEEP_ALWAYS = r".*\.(gate|router|shared_expert_gate)$"

_BNB_LINEAR_ONLY = ("bitsandbytes (through transformers) replaces only layers that are exactly nn.Linear, and "
                    "{what}: they would stay in full precision, and the artifact would not reload quantized")


@dataclass(frozen=True)
class Architecture:
    model_type: str
    name: str
    # A mixture of experts (its routers stay in full precision).
    moe: bool = False
    # Why a method is refused, by method label.
    refused: dict[str, str] = field(default_factory=dict)
    # Regular expressions (on module names) of more layers kept in full precision.
    keep: tuple[str, ...] = ()

    def works(self, label: str) -> bool:
        return label not in self.refused

    def working(self) -> list[str]:
        return [m for m in METHOD_LABELS if self.works(m)]


TABLE: dict[str, Architecture] = {a.model_type: a for a in (
    Architecture("llama", "Llama"),
    Architecture("mistral", "Mistral"),
    Architecture("qwen2", "Qwen2"),
    Architecture("qwen3", "Qwen3"),
    Architecture("gemma2", "Gemma 2"),
    Architecture("gemma3_text", "Gemma 3 (text)"),
    Architecture("phi3", "Phi-3"),
    Architecture("olmo2", "OLMo 2"),
    Architecture("granite", "Granite"),
    Architecture("gpt_neox", "GPT-NeoX (Pythia)"),
    Architecture("falcon", "Falcon", refused={
        m: _BNB_LINEAR_ONLY.format(what="Falcon's layers are FalconLinear") for m in ("nf4", "fp4", "int8")}),
    Architecture("mixtral", "Mixtral", moe=True),
    Architecture("qwen2_moe", "Qwen2-MoE", moe=True),
    Architecture("qwen3_moe", "Qwen3-MoE", moe=True),
    Architecture("deepseek_v3", "DeepSeek-V3", moe=True),
    Architecture("gpt_oss", "gpt-oss", moe=True),
)}


def label(method: str, fmt: str, default_format: str) -> str:
    return method if fmt == default_format else f"{method}:{fmt}"


def get(model_type: str | None) -> Architecture | None:
    return TABLE.get(model_type or "")


def keep_patterns(model_type: str | None) -> list[str]:
    """Regular expressions matching (from the start) the names of the layers
    that stay in full precision, as llm-compressor's `re:` ignore entries and
    transformers' bitsandbytes skip list both take them."""
    arch = get(model_type)
    return [KEEP_ALWAYS, *(arch.keep if arch else ())]


def keeps_full_precision(model_type: str | None, module: str) -> bool:
    """Whether `module` (a module name of the checkpoint) stays unquantized."""
    return any(re.match(p, module) for p in keep_patterns(model_type))


def refusal(model_type: str | None, method_label: str) -> str | None:
    """The one line refusing `method_label` for this architecture, or None."""
    arch = get(model_type)
    if arch is None or arch.works(method_label):
        return None
    flag = "--method " + method_label.replace(":", " --format ")
    return (f"{arch.name} ({arch.model_type}) cannot be quantized with {flag}: {arch.refused[method_label]}; "
            f"methods that work for {arch.name}: {', '.join(arch.working())}")
