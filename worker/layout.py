"""How qfarm builds a quantized checkpoint's model in transformers where the
architecture's own modules cannot hold its quantized layers.

A mixture of experts gets one nn.Linear per expert. transformers 5 builds
experts as fused 3-D parameters (`Qwen3MoeExperts`, `MixtralExperts`,
`GptOssExperts`), into which a quantized checkpoint's per-expert layers do
not load: the serve load held the experts dequantized (Qwen3-MoE: 0.95 of
the original's bytes in memory), and gpt-oss's reference load read them as
nothing at all (its experts stayed at their random initialisation). Built
with llm-compressor's linearized experts (`LinearExperts2D`, the classes its
quantization ran on), each expert's projections are nn.Linear modules, which
transformers' GPTQ, AWQ and compressed-tensors integrations load like any
other linear layer, packed where a kernel runs them so.

This is llm-compressor's `load_quantizable_moe`, done by hand for two
reasons: transformers' class patching (`apply_patches`, which it uses)
lists every attribute of every imported transformers module, and 102 of
them (legacy `*_fast` image-processor aliases) import torchvision when
listed, which a worker does not install: the load failed; and the conversion
mapping it registers for the model type stays registered after the load,
which would change how the next load of that architecture in the process
reads its checkpoint. Here the experts class is replaced in its own modeling
module for the model's construction only (as transformers does: its
`_init_weights` checks modules against the original class afterwards), and
the mapping is restored when the load is done.

Falcon gets nn.Linear where it has `FalconLinear`, a subclass whose forward
is the same product (`x @ W.T + b`): compressed-tensors decompresses nothing
into it ("'FalconLinear' object has no attribute 'weight'"), and
transformers' GPTQ and bitsandbytes integrations skip it (they take only
layers that are exactly nn.Linear).
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

# How checkpoints of architectures llm-compressor 0.14 has no 2-D load
# mapping for name their per-expert layers (the mapping it takes through
# patch_moe_mappings), and the fused targets of transformers' own mapping
# that they replace.
_RENAMES: dict[str, tuple[list[tuple[str, str]], list[str]]] = {
    # Mixtral's hub layout: block_sparse_moe.experts.N.w1/w3/w2 (transformers
    # keeps its block_sparse_moe → mlp renaming).
    "mixtral": ([(r"\.experts\.(\d+)\.w1\.", r".experts.\1.gate_proj."), (r"\.experts\.(\d+)\.w3\.", r".experts.\1.up_proj."),
                 (r"\.experts\.(\d+)\.w2\.", r".experts.\1.down_proj.")], [".experts.gate_up_proj", ".experts.down_proj"]),
    # gpt-oss checkpoints are fused; a quantized one (written from the
    # linearized model) already names experts.N.gate_proj/up_proj/down_proj.
    "gpt_oss": ([], []),
}


def supported(model_type: str | None) -> bool:
    """Whether a checkpoint of this architecture can be loaded linearized."""
    from llmcompressor.modeling.moe.conversion_mappings import has_linearize_load_mappings

    return model_type in _RENAMES or bool(model_type and has_linearize_load_mappings(model_type))


@functools.cache
def load_mapping(model_type: str) -> tuple[type, list]:
    """The fused experts class of the architecture and the conversion
    mapping that reads a checkpoint's per-expert layers into its linearized
    experts (llm-compressor's, with the renames above where it has none).
    Saving through the same mapping reverses it: the checkpoint keeps the
    architecture's own names (Mixtral's w1/w3/w2, which vLLM reads)."""
    from llmcompressor.modeling.moe.conversion_mappings import get_linearize_load_mappings, patch_moe_mappings
    from transformers.core_model_loading import WeightRenaming

    renames, remove = _RENAMES.get(model_type, (None, []))
    if renames is None:
        experts_cls, load_map, _ = get_linearize_load_mappings(model_type)
        return experts_cls, load_map
    extra: list = [WeightRenaming(source_patterns=source, target_patterns=target) for source, target in renames]
    with patch_moe_mappings(model_type, extra, remove):
        experts_cls, load_map, _ = get_linearize_load_mappings(model_type)
    return experts_cls, load_map


def internal_name(model_type: str, module: str) -> str:
    """A checkpoint's module name (relative, e.g. `block_sparse_moe.experts.0.w1`)
    as the linearized model names it (`mlp.experts.0.gate_proj`)."""
    from transformers.core_model_loading import WeightRenaming

    name = f".{module}."
    for transform in load_mapping(model_type)[1]:
        if isinstance(transform, WeightRenaming):
            for source, target in zip(transform.source_patterns, transform.target_patterns, strict=False):
                name = re.sub(source, target, name)
    return name.strip(".")


def plain_linears(model, model_type: str | None) -> int:
    """Make Falcon's FalconLinear layers plain nn.Linear in a loaded model
    (the same product; see above), so a quantizer treats them as linear
    layers: compressed-tensors saved them `dense` (nothing packed), and then
    wrote a config whose ignore list left out the LM head (it lists only
    layers of a quantized type, FalconLinear), so loading the artifact
    quantized the head too, from weights it does not have (NaN logits).
    Returns how many layers changed."""
    if model_type != "falcon":
        return 0
    import torch
    from transformers.models.falcon.modeling_falcon import FalconLinear

    changed = 0
    for module in model.modules():
        if type(module) is FalconLinear:
            module.__class__ = torch.nn.Linear  # type: ignore[assignment]  # the same forward
            changed += 1
    return changed


def needed(config: dict) -> bool:
    """Whether a quantized checkpoint of this config is built differently."""
    model_type = config.get("model_type")
    return bool(config.get("quantization_config")) and (model_type == "falcon" or supported(model_type))


@contextmanager
def built(model_type: str | None) -> Iterator[None]:
    """While active, `from_pretrained` of this architecture builds the
    modules that hold quantized layers as above (nothing changes for other
    architectures)."""
    from compressed_tensors.utils import patch_attr
    from transformers import modeling_utils

    replace: list[tuple[object, str, type]] = []
    mapping = None
    if model_type == "falcon":
        import torch
        from transformers.models.falcon import modeling_falcon

        replace.append((modeling_falcon, "FalconLinear", torch.nn.Linear))
    elif supported(model_type):
        from llmcompressor.modeling.moe.linear_experts import LinearExperts2D

        assert model_type is not None
        experts_cls, mapping = load_mapping(model_type)
        linear_cls: type[Any] = LinearExperts2D.get_linear_experts_cls(experts_cls)
        replace.append((sys.modules[experts_cls.__module__], experts_cls.__name__, routed_only(linear_cls)))
    if not replace:
        yield
        return

    @contextmanager
    def construction() -> Iterator[None]:
        with ExitStack() as stack:
            for module, name, cls in replace:
                stack.enter_context(patch_attr(module, name, cls))
            yield

    with _conversion_mapping(model_type, mapping), patch_attr(modeling_utils, "apply_patches", construction):
        # modeling_utils enters apply_patches() around `cls(config)` only.
        yield


# One routed class per linearized class, as llm-compressor keeps one of those per architecture.
_ROUTED: dict[Any, type[Any]] = {}


def routed_only(linear_cls: type[Any]) -> type[Any]:
    """`linear_cls` (llm-compressor's linearized experts) running only the
    experts that tokens were routed to, as transformers' fused experts do.

    Its forward runs every expert on every step, those no token was routed
    to on an empty batch, so that calibration reaches each one. A loaded
    model needs none of that: an empty batch adds nothing to the sum, and
    transformers' FP8 kernel cannot take one (`CompressedTensorsFP8Linear`
    reshapes its output to (0, -1): the FP8 serve load of a Qwen3-MoE
    failed on an H200, bench/RESULTS.md §7). Each expert also found its
    tokens with a `torch.where` of its own, a host synchronisation per
    expert per layer; here one `bincount` per layer does it for all. The
    sum is the library's, in the same order (experts ascending, each one's
    tokens by top-k slot, then position). While llm-compressor calibrates
    all experts, its own forward runs."""
    from llmcompressor.modeling.moe.context import get_calibrate_all_experts_flag
    from llmcompressor.modeling.moe.linear_experts import LinearExperts2D

    if linear_cls.forward is not LinearExperts2D.forward:  # its own routing (Llama 4)
        return linear_cls
    if linear_cls in _ROUTED:
        return _ROUTED[linear_cls]

    def forward(self, hidden_states, top_k_index, top_k_weights):
        if get_calibrate_all_experts_flag():
            return linear_cls.forward(self, hidden_states, top_k_index, top_k_weights)
        import torch

        out = torch.zeros_like(hidden_states)
        tokens = top_k_index.shape[0]
        routed = top_k_index.t().reshape(-1)  # slot-major: (slot, token) pairs
        order = torch.argsort(routed, stable=True)
        token_of, slot_of = order % tokens, order // tokens
        start = 0
        for expert, count in enumerate(torch.bincount(routed, minlength=self.num_experts).tolist()):
            if count:
                token, slot = token_of[start:start + count], slot_of[start:start + count]
                start += count
                y = self[expert](hidden_states[token]) * top_k_weights[token, slot, None]
                out.index_add_(0, token, y.to(out.dtype))
        return out

    doc = "llm-compressor's linearized experts, running only those tokens were routed to (worker/layout.routed_only)."
    _ROUTED[linear_cls] = type(linear_cls.__name__, (linear_cls,), {"forward": forward, "__doc__": doc})
    return _ROUTED[linear_cls]


@contextmanager
def _conversion_mapping(model_type: str | None, mapping: list | None) -> Iterator[None]:
    """transformers' checkpoint conversion mapping of `model_type` replaced
    by `mapping` while active (None: left as it is)."""
    from transformers import conversion_mapping

    if model_type is None or mapping is None:
        yield
        return
    conversion_mapping.get_checkpoint_conversion_mapping(model_type)  # builds the cache
    cache = conversion_mapping._checkpoint_conversion_mapping_cache
    assert cache is not None
    had, before = model_type in cache, cache.get(model_type)
    was_user = model_type in conversion_mapping.USER_REGISTERED_MAPPINGS
    conversion_mapping.register_checkpoint_conversion_mapping(model_type, mapping, overwrite=True)
    try:
        yield
    finally:
        if had:
            cache[model_type] = before
        else:
            cache.pop(model_type, None)
        if not was_user:
            conversion_mapping.USER_REGISTERED_MAPPINGS.discard(model_type)
