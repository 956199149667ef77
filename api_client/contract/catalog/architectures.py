"""Architectures qfarm has proven, method by method: each either works
(quantized_fraction ≥ 0.95 from the artifact, routers untouched) or is
refused at submit, from config.json, with the reason and the methods that
do work. tests/test_architectures.py runs every (architecture, method) pair
on a tiny random checkpoint and asserts that what happens is what this table
claims; `qfarm methods --architectures` and docs/methods.md print it.

An architecture not listed is accepted: the job measures what it quantized
like any other and fails where less than 95 % of the weights were reached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from api_client.errors import SpecError

# Method labels as `qfarm compare --methods` spells them: NAME or NAME:FORMAT.
METHOD_LABELS = ("rtn", "gptq", "gptq:gptq", "awq", "awq:awq", "nf4", "fp4", "int8", "fp8", "gguf")

# Methods whose table entry holds for every format: a GGUF file of any type
# is written by the same converter, so what stops one stops them all.
ANY_FORMAT = ("gguf",)

# Layers every MoE keeps in full precision, whatever the architecture calls
# its block: the router (`gate`, `router`) and a shared expert's gate. vLLM
# loads them unquantized, and they are a sliver of the weights.
KEEP_ALWAYS = r".*\.(gate|router|shared_expert_gate)$"

BNB = ("nf4", "fp4", "int8")
GPTQMODEL = ("gptq:gptq", "awq:awq")


def _fused_experts(name: str) -> dict[str, str]:
    why = (f"bitsandbytes (through transformers) replaces only nn.Linear layers, and transformers builds {name}'s "
           f"experts as fused 3-D parameters: most of the weights would stay in full precision")
    return dict.fromkeys(BNB, why)


# The GGUF converter's module for these architectures does not load with the
# gguf library qfarm installs (catalog/gguf_architectures.NEEDS_NEWER_GGUF).
_NEWER_GGUF = {"gguf": "llama.cpp's GGUF converter for it, as AutoRound 0.15.1 vendors it, needs a gguf library newer "
                       "than 0.19.0 (the newest on PyPI)"}


def _q_zeros(name: str) -> str:
    return (f"GPTQModel 7.6's AWQ fails packing {name}'s layers (KeyError 'q_zeros' in a worker thread, which ends "
            f"the job process)")


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
    # What a user of its artifacts should know.
    note: str | None = None

    def works(self, label: str) -> bool:
        return self.reason(label) is None

    def reason(self, label: str) -> str | None:
        """Why `label` is refused (a method of ANY_FORMAT by its name alone), or None."""
        method = label.partition(":")[0]
        return self.refused.get(label) or (self.refused.get(method) if method in ANY_FORMAT else None)

    def working(self) -> list[str]:
        return [m for m in METHOD_LABELS if self.works(m)]


TABLE: dict[str, Architecture] = {a.model_type: a for a in (
    Architecture("llama", "Llama"),
    Architecture("mistral", "Mistral", refused={
        "gguf": "qfarm reads a GGUF file's tokenizer back through transformers 5.17, which cannot read the `mistral` "
                "tokenizer model llama.cpp's converter writes for Mistral"}),
    Architecture("qwen2", "Qwen2", refused=_NEWER_GGUF),
    Architecture("qwen3", "Qwen3", refused=_NEWER_GGUF),
    Architecture("gemma2", "Gemma 2", refused=_NEWER_GGUF),
    Architecture("gemma3_text", "Gemma 3 (text)", refused={**_NEWER_GGUF,
        "gptq:gptq": "GPTQModel 7.6 fails to save a Gemma 3 checkpoint (it writes a RoPE configuration transformers "
                     "rejects)",
        "awq:awq": "GPTQModel 7.6's AWQ calls Gemma 3's rotary embedding without the layer type it needs"}),
    Architecture("phi3", "Phi-3", refused={
        "gptq:gptq": "GPTQModel 7.6 splits Phi-3's fused gate_up_proj into gate_proj and up_proj, which transformers' "
                     "Phi-3 does not have: the artifact would load with that layer missing",
        "awq:awq": _q_zeros("Phi-3"),
        "gguf": "not proven: llama.cpp's Phi-3 converter reads a sentencepiece tokenizer.model, which qfarm's test "
                "checkpoint does not have"}),
    Architecture("olmo2", "OLMo 2"),
    Architecture("granite", "Granite", refused=_NEWER_GGUF),
    Architecture("gpt_neox", "GPT-NeoX (Pythia)", refused={**dict.fromkeys(
        GPTQMODEL, "GPTQModel 7.6 looks for the LM head as lm_head.weight, which GPT-NeoX checkpoints name embed_out, "
                   "and stops"),
        "gguf": "AutoRound 0.15.1's GGUF export reads GPT-NeoX's `rotary_pct`, which transformers 5 no longer keeps in "
                "the model's configuration"}),
    Architecture("falcon", "Falcon", refused={"awq:awq": _q_zeros("Falcon")},
                 note="a quantized Falcon checkpoint loads in transformers only with its FalconLinear layers built as "
                      "nn.Linear (the same product), as qfarm's loads do (worker/layout.py); vLLM uses layers of its "
                      "own"),
    Architecture("mixtral", "Mixtral", moe=True, refused={
        **_fused_experts("Mixtral"),
        "gguf": "AutoRound 0.15.1's GGUF export cannot map transformers 5's fused Mixtral experts back to the "
                "per-expert projections llama.cpp's converter writes"}),
    Architecture("qwen2_moe", "Qwen2-MoE", moe=True, refused={**_fused_experts("Qwen2-MoE"), **_NEWER_GGUF}),
    Architecture("qwen3_moe", "Qwen3-MoE", moe=True, refused={**_fused_experts("Qwen3-MoE"), **_NEWER_GGUF}),
    Architecture("deepseek_v3", "DeepSeek-V3", moe=True, refused={
        **_fused_experts("DeepSeek-V3"), **_NEWER_GGUF,
        "awq:awq": "GPTQModel 7.6's AWQ clipping search takes a layer's outputs in batches that must divide them, and "
                   "DeepSeek-V3's kv_a_proj_with_mqa (kv_lora_rank + qk_rope_head_dim outputs) does not (an "
                   "AssertionError in a worker thread, which ends the job process)"}),
    Architecture("gpt_oss", "gpt-oss", moe=True, refused={
        **_fused_experts("gpt-oss"),
        "gptq:gptq": "GPTQModel 7.6 writes gpt-oss's experts one layer each, and they do not reload as the original "
                     "computes (logits as far off as random experts)",
        "awq:awq": "GPTQModel 7.6's AWQ fails on gpt-oss's experts (a reshape of an empty tensor in a worker thread, "
                   "which ends the job process)",
        "gguf": "AutoRound 0.15.1's GGUF export fails restoring gpt-oss's experts as transformers 5 holds them"}),
)}


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


def check(config: dict, method: str, fmt: str | None) -> None:
    """Refuse, in one line, a method this checkpoint's architecture cannot take."""
    from api_client.contract import catalog

    line = refusal(config.get("model_type"), catalog.label_of(method, fmt))
    if line:
        raise SpecError(line)


def refusal(model_type: str | None, method_label: str) -> str | None:
    """The one line refusing `method_label` for this architecture, or None."""
    arch = get(model_type)
    if arch is None or arch.works(method_label):
        return None
    flag = "--method " + method_label.replace(":", " --format ")
    return (f"{arch.name} ({arch.model_type}) cannot be quantized with {flag}: {arch.reason(method_label)}; "
            f"methods that work for {arch.name}: {', '.join(arch.working())}")


def matrix() -> list[tuple[str, list[str]]]:
    """One row per architecture: its name and, per method label, `works` or
    `refused`."""
    return [(f"{a.name} (`{a.model_type}`)", ["works" if a.works(m) else "refused" for m in METHOD_LABELS])
            for a in TABLE.values()]


def reasons() -> list[str]:
    """Why each refused pair is refused (one line per architecture and
    reason), and the notes."""
    lines = []
    for a in TABLE.values():
        by_reason: dict[str, list[str]] = {}
        for m, why in a.refused.items():
            by_reason.setdefault(why, []).append(m)
        lines += [f"{a.name}, {', '.join(ms)}: {why}" for why, ms in by_reason.items()]
        if a.note:
            lines.append(f"{a.name}: {a.note}")
    return lines


def markdown() -> str:
    """The support matrix as docs/methods.md shows it (`qfarm methods --architectures --markdown`)."""
    head = "| architecture | " + " | ".join(f"`{m}`" for m in METHOD_LABELS) + " |"
    rows = [head, "|---|" + "---|" * len(METHOD_LABELS)]
    rows += [f"| {name} | " + " | ".join("✓" if c == "works" else "refused" for c in cells) + " |" for name, cells in matrix()]
    return "\n".join(rows + [""] + [f"- {line}" for line in reasons()])
