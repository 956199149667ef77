"""A compressed-tensors `pack-quantized` checkpoint rewritten in the classic
GPTQ layout, so it can be served packed.

compressed-tensors 0.19 has no packed module of its own any more, and
transformers runs its checkpoints by dequantizing every weight to the dense
dtype: a 4-bit 7B model then takes the memory of the fp16 one. GPTQModel's
kernels (Triton on a GPU, torch on a CPU) run int4/int8 weights packed, and
the two layouts hold the same integers:

- compressed-tensors packs `weight_packed` [out, in·b/32] along the input
  dimension, value i of a word at bit i·b, as unsigned q + 2^(b-1); the
  classic `qweight` [in·b/32, out] packs the same values the same way along
  the same dimension, so it is the transpose;
- the zero point: compressed-tensors stores a signed one (or none, when
  symmetric, meaning 0); GPTQModel's own format `gptq_v2` stores the
  unsigned one (2^(b-1) for a symmetric scheme) packed along the output
  dimension, which is the transpose of compressed-tensors' packing along
  dimension 0;
- scales [out, groups] become fp16 `scales` [groups, out];
- the group of each input column: `weight_g_idx` where the checkpoint has
  one (activation order "group"), column // group size otherwise.

Nothing is requantized: dequantizing either checkpoint gives the same
weights, to fp16 rounding of the scales (tests/test_packing.py checks the
logits). `gptq_v2` rather than the classic `gptq` (v1) because v1 stores
zero − 1, which cannot hold a zero point of 0 in 4 bits (asymmetric AWQ).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CONVERTED = "gptq_v2"


class NotConvertible(Exception):
    """The checkpoint has no packed GPTQ equivalent; the message says why."""


@dataclass(frozen=True)
class Scheme:
    bits: int
    group_size: int  # -1: one scale per output channel
    symmetric: bool


def scheme_of(config: dict) -> Scheme:
    """The one int4/int8 weight-only scheme of a compressed-tensors
    quantization config, or NotConvertible."""
    qc = config.get("quantization_config") or {}
    if qc.get("quant_method") != "compressed-tensors":
        raise NotConvertible("not a compressed-tensors checkpoint")
    groups = list((qc.get("config_groups") or {}).values())
    if not groups:
        raise NotConvertible("no quantization scheme in config.json")
    schemes = set()
    for group in groups:
        fmt = group.get("format") or qc.get("format")
        weights = group.get("weights") or {}
        if fmt != "pack-quantized":
            raise NotConvertible(f"format {fmt} is not pack-quantized")
        if group.get("input_activations") or group.get("output_activations"):
            raise NotConvertible("activations are quantized too (no weight-only kernel)")
        if weights.get("type") != "int" or weights.get("num_bits") not in (4, 8):
            raise NotConvertible(f"{weights.get('type')}{weights.get('num_bits')} weights (the kernels take int4/int8)")
        strategy = weights.get("strategy")
        if strategy == "group":
            size = int(weights["group_size"])
        elif strategy == "channel":
            size = -1
        else:
            raise NotConvertible(f"strategy {strategy} (the kernels take group or channel)")
        schemes.add(Scheme(int(weights["num_bits"]), size, bool(weights.get("symmetric", True))))
    if len(schemes) != 1:
        raise NotConvertible("layers quantized with different schemes")
    return schemes.pop()


def to_gptq(src: Path, dest: Path, rename: Callable[[str], str] | None = None) -> Path:
    """Write `src` (a compressed-tensors pack-quantized checkpoint) to `dest`
    in GPTQModel's `gptq_v2` layout; raises NotConvertible with the reason.

    `rename` maps a checkpoint's module name to the name the loaded model
    gives it, where they differ (a mixture of experts loaded with one layer
    per expert: Mixtral's `block_sparse_moe.experts.0.w1` is
    `mlp.experts.0.gate_proj`): transformers picks the layers to load packed
    by the names the config lists."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((src / "config.json").read_text())
    scheme = scheme_of(config)
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise NotConvertible("no safetensors files")
    dest.mkdir(parents=True, exist_ok=True)
    per_block: dict[str, set[str]] = {}
    dense_in_block: dict[str, set[str]] = {}
    weight_map: dict[str, str] = {}
    desc_act = False
    for shard in shards:
        with safe_open(shard, framework="pt") as f:
            names = list(f.keys())
            tensors = {n: f.get_tensor(n) for n in names}
        out: dict[str, torch.Tensor] = {}
        for name in names:
            if not name.endswith(".weight_packed"):
                continue
            prefix = name.removesuffix(".weight_packed")
            block, _, module = split_block(prefix)
            per_block.setdefault(block, set()).add(module)
            packed = tensors.pop(name)
            rows, cols = (int(x) for x in tensors.pop(f"{prefix}.weight_shape").tolist())
            scale = tensors.pop(f"{prefix}.weight_scale")
            zero = tensors.pop(f"{prefix}.weight_zero_point", None)
            g_idx = tensors.pop(f"{prefix}.weight_g_idx", None)
            groups = scale.shape[1]
            out[f"{prefix}.qweight"] = packed.t().contiguous()
            if zero is None:
                if not scheme.symmetric:
                    raise NotConvertible(f"{prefix} has no zero point although the scheme is asymmetric")
                zero_signed = torch.zeros(groups, rows, dtype=torch.int8)
                out[f"{prefix}.qzeros"] = pack_to_int32(zero_signed, scheme.bits, packed_dim=1)
            else:
                out[f"{prefix}.qzeros"] = zero.t().contiguous()
            out[f"{prefix}.scales"] = scale.t().to(torch.float16).contiguous()
            if g_idx is None:
                group = cols if scheme.group_size == -1 else scheme.group_size
                g_idx = torch.arange(cols, dtype=torch.int32) // group
            else:
                g_idx = g_idx.to(torch.int32)
                desc_act = desc_act or bool((g_idx[1:] < g_idx[:-1]).any())
            out[f"{prefix}.g_idx"] = g_idx
        leftover = [n for n in tensors if n.rsplit(".", 1)[-1].startswith("weight_")]
        if leftover:
            raise NotConvertible(f"{leftover[0]} has no GPTQ equivalent")
        for name, tensor in tensors.items():
            out[name] = tensor.to(torch.float16) if tensor.is_floating_point() else tensor
            if name.endswith(".weight") and tensor.dim() == 2:
                block, _, module = split_block(name.removesuffix(".weight"))
                dense_in_block.setdefault(block, set()).add(module)
        save_file(out, dest / shard.name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(out, shard.name))
    if not per_block:
        raise NotConvertible("no packed weights")
    if "" in per_block:
        raise NotConvertible("packed layers lie outside the numbered blocks")
    # transformers loads packed every linear layer of a block whose name ends
    # with one listed; blocks may differ (DeepSeek-V3's first layers are dense
    # MLPs, the rest experts), as long as no full-precision layer matches.
    rename = rename or (lambda module: module)
    listed = sorted({rename(m) for m in set.union(*per_block.values())})
    for block, dense in dense_in_block.items():
        clash = sorted(d for d in dense if any(rename(d).endswith(m) for m in listed))
        if block and clash:
            raise NotConvertible(f"{block}.{clash[0]} stays in full precision but shares its name with packed layers")

    for item in src.iterdir():
        if item.is_file() and item.suffix != ".safetensors" and item.name not in ("config.json", "model.safetensors.index.json", "recipe.yaml"):
            shutil.copy2(item, dest / item.name)
    if len(shards) > 1:
        (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config["quantization_config"] = {
        "quant_method": "gptq", "bits": scheme.bits, "group_size": scheme.group_size, "sym": scheme.symmetric,
        "desc_act": desc_act, "format": CONVERTED, "checkpoint_format": CONVERTED,
        "modules_in_block_to_quantize": [listed],
    }
    config["dtype"] = "float16"
    config.pop("torch_dtype", None)
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


def split_block(prefix: str) -> tuple[str, str, str]:
    """'model.layers.3.mlp.up_proj' → ('model.layers.3', '.', 'mlp.up_proj');
    a module outside the numbered blocks gives block ''."""
    parts = prefix.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1]), ".", ".".join(parts[i + 1:])
    return "", "", prefix


# -- checking a kernel against the checkpoint ----------------------------------------

# A kernel's output may differ from the dense product of the checkpoint's
# weights by this share of the output's largest magnitude: fp16 rounding and
# a reduction order (measured 1e-3 and below on the torch kernel, W4 and W8).
KERNEL_TOLERANCE = 1e-2


def dequantize(tensors: dict, bits: int, checkpoint_format: str):
    """The dense weight [out, in] (fp32) of one GPTQ-layout layer, from its
    checkpoint tensors (qweight, qzeros, scales, g_idx): the layout's own
    definition, w = (q − z) · s per input row's group, where `gptq` (v1)
    stores z − 1 and `gptq_v2` stores z."""
    import torch

    qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"].float()
    pack, mask = 32 // bits, (1 << bits) - 1
    shifts = torch.arange(pack, dtype=torch.int32) * bits
    # Value i of a word sits at bits i·b; qweight packs the input dimension, qzeros the output one.
    q = ((qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & mask).reshape(-1, qweight.shape[1])
    z = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & mask).reshape(qzeros.shape[0], -1)
    if checkpoint_format == "gptq":
        z = (z + 1) & mask
    g_idx = tensors["g_idx"].long() if "g_idx" in tensors else \
        torch.arange(q.shape[0]) // (q.shape[0] // scales.shape[0])
    weight = (q.float() - z[g_idx].float()) * scales[g_idx]
    return weight.t().contiguous()


def read_layer(path: Path, prefix: str) -> dict:
    """The checkpoint tensors of layer `prefix` (qweight, qzeros, scales, g_idx, bias)."""
    from safetensors import safe_open

    out = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name.startswith(prefix + ".") and name.rsplit(".", 1)[-1] in ("qweight", "qzeros", "scales", "g_idx", "bias"):
                    out[name.rsplit(".", 1)[-1]] = f.get_tensor(name)
    return out


class WrongOutput(Exception):
    """A kernel loaded but does not compute what the checkpoint holds."""


def check_kernel(model, path: Path) -> str:
    """Run the loaded model's first packed layer on a random input and
    compare it with the dense product of that layer's checkpoint weights. A
    kernel that loads but computes garbage (a repack for the wrong layout, a
    kernel built for another GPU) raises WrongOutput here, before any figure
    is taken on it. Returns what was checked: 'validated on LAYER (largest
    difference …)', or 'not checked: …' where the checkpoint's tensors of
    the layer cannot be read as GPTQ (a model whose modules transformers
    renames when loading): the kernel is then taken on its load alone."""
    import torch

    qc = _config_of(path)
    # The first packed layer held on a device (under a cap, later ones may be offloaded).
    name, module = next(((n, m) for n, m in model.named_modules()
                         if isinstance(getattr(m, "qweight", None), torch.Tensor) and not m.qweight.is_meta), (None, None))
    if module is None or name is None:
        return "not checked: no packed layer on a device in the loaded model"
    try:
        tensors = read_layer(path, name)
        weight = dequantize(tensors, int(qc["bits"]), qc.get("checkpoint_format") or qc.get("format") or "gptq")
    except Exception as exc:  # noqa: BLE001 - the checkpoint, not the kernel: said, and the kernel is kept
        return f"not checked: {name} not read from the checkpoint ({type(exc).__name__}: {exc})"[:300]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, weight.shape[1], generator=generator)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float16)
    try:
        with torch.inference_mode():
            got = module(x.to(device=module.qweight.device, dtype=dtype)).float().cpu()
    except Exception as exc:
        raise WrongOutput(f"{name}: the kernel raised {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from exc
    expected = x @ weight.t()
    if "bias" in tensors:  # from the checkpoint: a kernel may hold its own permuted copy
        expected += tensors["bias"].float()
    diff, scale = float((got - expected).abs().max()), float(expected.abs().max()) or 1.0
    if not diff <= KERNEL_TOLERANCE * scale:  # a NaN fails too
        raise WrongOutput(f"{name}: output differs from the checkpoint's dense product by {diff:.3g} (largest {scale:.3g})")
    return f"validated on {name} (largest difference {diff:.2g} of {scale:.2g})"


def _config_of(path: Path) -> dict:
    return json.loads((path / "config.json").read_text()).get("quantization_config") or {}
