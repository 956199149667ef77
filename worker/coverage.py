"""Which of the decoder's weights an artifact stores quantized, read from
its safetensors headers (not from what a library said it did).

A method is only as good as the weights it reached: Falcon's `FalconLinear`
layers were "quantized" by llm-compressor into a checkpoint of format
`dense` (fake-quantized bf16 beside its scales), and bitsandbytes skips
every layer that is not exactly `nn.Linear`; both jobs had succeeded.

Eligible are the weights the methods exist for: the linear and expert
weight matrices of the decoder layers. Embeddings, norms, `lm_head`, biases
and the layers an architecture keeps in full precision (MoE routers,
shared-expert gates: api_client/contract/catalog/architectures.py) are not.
`quantized_fraction` is the share of the eligible weights, by their
parameters (the bytes they had in the original), stored in a quantized
form:

- compressed-tensors: `weight_packed` (int4/int8 packed in int32) or a
  `weight` of an 8-bit type (FP8, int8); a float `weight` beside a
  `weight_scale` is fake-quantized, i.e. not stored quantized;
- GPTQ and AWQ (GPTQModel): `qweight`;
- bitsandbytes: a `weight` of uint8 (4-bit, two values a byte) with its
  quant_state, or of int8 with its `SCB` (LLM.int8());
- anything else (a float `weight`, a fused 3-D expert parameter) is full
  precision.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from api_client.contract.catalog import architectures
from api_client.contract.checkpoint import read_safetensors_header

# Below this share the job fails (issue 17: "more than 5 % left in full precision").
MIN_FRACTION = 0.95

# The decoder's numbered layers, as the architectures name them.
_DECODER_LAYER = re.compile(r"(^|\.)(layers|h|blocks|layer)\.\d+\.")
_EIGHT_BIT = {"F8_E4M3", "F8_E5M2", "I8"}
_NUMBERS = re.compile(r"\.\d+(?=\.|$)")


@dataclass
class Coverage:
    """What the artifact stores quantized, by parameters of eligible weights."""

    eligible_params: int = 0
    quantized_params: int = 0
    # Eligible modules stored in full precision (names as in the artifact).
    unreached: list[str] = field(default_factory=list)
    # Modules the architecture keeps in full precision that were quantized.
    kept_but_quantized: list[str] = field(default_factory=list)
    # Modules kept in full precision as they should be (routers, gates).
    kept: list[str] = field(default_factory=list)
    # Eligible parameters of the original checkpoint the artifact does not hold at all.
    missing_params: int = 0

    @property
    def fraction(self) -> float:
        total = self.eligible_params + self.missing_params
        return self.quantized_params / total if total else 0.0

    def as_metrics(self) -> dict:
        return {
            "quantized_fraction": self.fraction, "eligible_params": self.eligible_params,
            "quantized_params": self.quantized_params, "unreached_modules": patterns(self.unreached),
            "kept_full_precision": patterns(self.kept), "missing_params": self.missing_params,
        }

    def problem(self, method: str) -> str | None:
        """One line saying what is wrong with the artifact, or None."""
        if self.kept_but_quantized:
            return (f"{method} quantized layers that must stay in full precision (MoE routers and shared-expert gates, "
                    f"which vLLM loads unquantized): {_listed(self.kept_but_quantized)}")
        if self.eligible_params == 0:
            return f"{method} left no linear or expert weight in the decoder layers that could be measured"
        if self.fraction < MIN_FRACTION:
            missing = (f"; {self.missing_params:,} parameters of the original's are not in the artifact"
                       if self.missing_params else "")
            reached = f"not reached: {_listed(self.unreached)}" if self.unreached else "every layer present was reached"
            return (f"{method} stored only {self.fraction * 100:.1f} % of the decoder's linear and expert weights "
                    f"quantized (at least {MIN_FRACTION * 100:.0f} % expected); {reached}{missing}")
        return None


@dataclass
class _Entity:
    """One weight of the artifact: a module's weight or a fused parameter."""

    params: int = 0
    quantized: bool = False


def measure(artifact: Path, original: Path | None = None) -> Coverage:
    """Read the artifact's safetensors headers (and its config for the bit
    width of packed weights) and say which eligible weights are quantized.
    With the `original` checkpoint, eligible weights it has and the artifact
    lacks count as not quantized."""
    config = json.loads((artifact / "config.json").read_text())
    out = _tally(_entities(artifact, _packed_bits(config.get("quantization_config") or {})), config.get("model_type"))
    if original is not None:
        before = _tally(_entities(original, None), config.get("model_type"))
        out.missing_params = max(0, before.eligible_params - out.eligible_params)
    return out


# llama.cpp's names: `blk.N.attn_q.weight`; the router is `ffn_gate_inp`,
# which llama.cpp's quantizer itself always keeps in full precision.
_GGUF_BLOCK = re.compile(r"^blk\.\d+\.")
_GGUF_KEPT = re.compile(r"\.(ffn_gate_inp|ffn_gate_inp_shexp)\.weight$")
_GGUF_FULL = {"F32", "F16", "BF16", "F64"}


def measure_gguf(path: Path) -> Coverage:
    """The same measure for a GGUF file: its 2-D (and 3-D expert) weights of
    the blocks, by parameters, stored in a quantized GGML type (Q*, IQ*)
    rather than F32/F16/BF16. Norms and biases are 1-D and not eligible."""
    from gguf import GGUFReader

    out = Coverage()
    for t in GGUFReader(path).tensors:
        name = t.name
        if not _GGUF_BLOCK.match(name) or not name.endswith(".weight") or len(t.shape) < 2:
            continue
        quantized = t.tensor_type.name not in _GGUF_FULL
        if _GGUF_KEPT.search(name):
            (out.kept_but_quantized if quantized else out.kept).append(name)
            continue
        out.eligible_params += int(t.n_elements)
        if quantized:
            out.quantized_params += int(t.n_elements)
        else:
            out.unreached.append(name)
    return out


def _entities(checkpoint: Path, bits: int | None) -> dict[str, _Entity]:
    entities: dict[str, _Entity] = {}
    for shard in sorted(checkpoint.glob("*.safetensors")):
        header = read_safetensors_header(shard)
        shapes = _packed_shapes(shard, header)
        for name, meta in header.items():
            _add(entities, name, meta["dtype"], tuple(meta["shape"]), bits, shapes)
    return entities


def _tally(entities: dict[str, _Entity], model_type: str | None) -> Coverage:
    out = Coverage()
    for module, entity in sorted(entities.items()):
        if not _DECODER_LAYER.search(module) or entity.params == 0:
            continue
        if architectures.keeps_full_precision(model_type, module):
            (out.kept_but_quantized if entity.quantized else out.kept).append(module)
            continue
        out.eligible_params += entity.params
        if entity.quantized:
            out.quantized_params += entity.params
        else:
            out.unreached.append(module)
    return out


def _add(entities: dict[str, _Entity], name: str, dtype: str, shape: tuple[int, ...], bits: int | None,
         packed_shapes: dict[str, tuple[int, ...]]) -> None:
    """Fold one tensor of the artifact into the weight it belongs to."""
    if ".weight." in name:
        # bitsandbytes' 4-bit state (absmax, quant_map, quant_state.*) beside its weight.
        entities.setdefault(name.split(".weight.")[0], _Entity()).quantized = True
        return
    module, _, leaf = name.rpartition(".")
    numel = 1
    for d in shape:
        numel *= d
    if leaf == "weight_packed":
        entity = entities.setdefault(module, _Entity())
        entity.quantized = True
        full = packed_shapes.get(module)
        entity.params = _product(full) if full else numel * 32 // (bits or 4)
    elif leaf == "qweight":
        entity = entities.setdefault(module, _Entity())
        entity.quantized = True
        entity.params = numel * 32 // (bits or 4)
    elif leaf == "weight" and len(shape) >= 2:
        entity = entities.setdefault(module, _Entity())
        if dtype == "U8":  # bitsandbytes 4-bit: two values a byte
            entity.quantized, entity.params = True, numel * 2
        else:
            entity.quantized, entity.params = dtype in _EIGHT_BIT, numel
    elif len(shape) == 3 and ".experts" in name and not leaf.endswith(("bias", "_scale", "_zero_point")):
        # A fused expert parameter (gate_up_proj [E, …]) left as it was.
        entities.setdefault(name, _Entity()).params = numel


def _product(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _packed_bits(qc: dict) -> int | None:
    """The bit width of packed weights where the config names one."""
    if isinstance(qc.get("bits"), int):
        return int(qc["bits"])
    widths = {int(bits) for g in (qc.get("config_groups") or {}).values()
              if isinstance(bits := (g.get("weights") or {}).get("num_bits"), int)}
    return widths.pop() if len(widths) == 1 else None


def _packed_shapes(shard: Path, header: dict) -> dict[str, tuple[int, ...]]:
    """compressed-tensors' `weight_shape` tensors: the dense shape of each
    packed weight (two int64 values each, read without loading the rest)."""
    names = [n for n in header if n.endswith(".weight_shape")]
    if not names:
        return {}
    from safetensors import safe_open

    with safe_open(str(shard), framework="numpy") as f:
        return {n.removesuffix(".weight_shape"): tuple(int(x) for x in f.get_tensor(n).tolist()) for n in names}


def patterns(modules: Iterable[str]) -> list[str]:
    """Module names with layer and expert numbers folded:
    model.layers.3.mlp.experts.7.up_proj → model.layers.*.mlp.experts.*.up_proj."""
    return sorted({_NUMBERS.sub(".*", m) for m in modules})


def _listed(modules: list[str], at_most: int = 6) -> str:
    folded = patterns(modules)
    more = f" and {len(folded) - at_most} more" if len(folded) > at_most else ""
    return f"{', '.join(folded[:at_most])}{more} ({len(modules)} modules)"
