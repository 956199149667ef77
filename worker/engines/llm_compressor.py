"""llm-compressor: GPTQ, AWQ, RTN and FP8 into compressed-tensors checkpoints.

With the weights on the CPU, llm-compressor's sequential pipeline onloads one
decoder layer at a time to the GPU for calibration, so a model larger than the
GPU still quantizes.

A method says what it wants (a `Recipe`: the algorithm and the weight
scheme); the engine turns it into llm-compressor modifiers once the model is
loaded, because what they target depends on the model: which layers are
linear, which must stay in full precision (the LM head, MoE routers and
shared-expert gates), and for AWQ which norm feeds which projections.

Mixtures of experts are done the way llm-compressor 0.14 intends: the fused
3-D expert parameters transformers 5 loads (`Qwen3MoeExperts`,
`GptOssExperts`, …) are linearized into one `nn.Linear` per expert
(`llmcompressor.modeling.moe.linearize_moe`) before the recipe is applied, so
every method quantizes them, and `oneshot` calibrates every expert on every
calibration token (`moe_calibrate_all_experts`, its default), not only on
the tokens the router sends it; how many tokens the router sent each expert
is recorded beside it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from api_client.contract.catalog import architectures
from api_client.contract.states import Stage
from worker import layout

# AWQ smooths the output of a layer into the projections it feeds; which
# layer feeds which is the architecture's. llm-compressor 0.14 has no mapping
# for these (and its DeepSeek-V3 one lists the router of MoE layers beside the
# projections of the dense first layers, which it cannot group), so they are
# given here as (smoothed layer, balanced layers) patterns:
# - OLMo 2 normalises after attention and after the MLP, so nothing but
#   v→o and up→down can be smoothed (llm-compressor's mapping for OLMo and OLMo 3);
# - GPT-NeoX and Falcon have a LayerNorm before the fused QKV projection and
#   one before the MLP's first projection (Falcon-7B: one norm feeding both);
# - DeepSeek-V3 takes llm-compressor's own router-free mapping for the same
#   mixed dense/MoE family (DeepSeek-V2, GLM-4.7-Flash).
_MLA = [("re:.*input_layernorm$", ["re:.*(q|q_a)_proj$", "re:.*kv_a_proj_with_mqa$"]),
        ("re:.*q_a_layernorm$", ["re:.*q_b_proj$"]), ("re:.*kv_a_layernorm$", ["re:.*kv_b_proj$"]),
        ("re:.*post_attention_layernorm$", ["re:.*gate_proj$", "re:.*up_proj$"]), ("re:.*up_proj$", ["re:.*down_proj$"])]


def awq_mappings(config: dict[str, Any]) -> list[tuple[str, list[str]]] | None:
    """The AWQ mapping qfarm gives for this checkpoint's config (None:
    llm-compressor's own for the architecture)."""
    model_type = config.get("model_type")
    if model_type == "olmo2":
        return [("re:.*v_proj$", ["re:.*o_proj$"]), ("re:.*up_proj$", ["re:.*down_proj$"])]
    if model_type == "gpt_neox":
        return [("re:.*input_layernorm$", ["re:.*query_key_value$"]),
                ("re:.*post_attention_layernorm$", ["re:.*dense_h_to_4h$"])]
    if model_type == "falcon":
        if config.get("new_decoder_architecture"):
            return [("re:.*ln_attn$", ["re:.*query_key_value$"]), ("re:.*ln_mlp$", ["re:.*dense_h_to_4h$"])]
        if config.get("parallel_attn", True):
            return [("re:.*input_layernorm$", ["re:.*query_key_value$", "re:.*dense_h_to_4h$"])]
        return [("re:.*input_layernorm$", ["re:.*query_key_value$"]),
                ("re:.*post_attention_layernorm$", ["re:.*dense_h_to_4h$"])]
    if model_type == "deepseek_v3":
        return _MLA
    return None


@dataclass
class Recipe:
    """What a method asks llm-compressor for: `algorithm` is gptq, awq or
    None (round to nearest), `scheme` a compressed-tensors config group
    without its targets, `options` the algorithm's own."""

    algorithm: str | None
    scheme: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


def int_weight_scheme(bits: int, group_size: int, symmetric: bool) -> dict[str, Any]:
    """Integer weight-only quantization (WxA16) as compressed-tensors describes it."""
    return {
        "weights": {
            "num_bits": bits,
            "type": "int",
            "symmetric": symmetric,
            "strategy": "group" if group_size > 0 else "channel",
            "group_size": group_size if group_size > 0 else None,
            "dynamic": False,
        },
    }


def fp8_dynamic_scheme() -> dict[str, Any]:
    """FP8 weights per channel, activations per token at run time
    (llm-compressor's FP8_DYNAMIC preset)."""
    from compressed_tensors.quantization import preset_name_to_scheme

    return preset_name_to_scheme("FP8_DYNAMIC", ["Linear"]).model_dump(exclude={"targets"})


def ignored(model: Any, model_type: str | None) -> list[str]:
    """Layers left in full precision: the LM head (whatever the architecture
    calls it) and what the architecture keeps (routers, shared-expert gates)."""
    head = model.get_output_embeddings()
    names = [name for name, module in model.named_modules() if head is not None and module is head] or ["lm_head"]
    return names + [f"re:{p}" for p in architectures.keep_patterns(model_type)]


def modifiers(recipe: Recipe, model: Any, config: dict[str, Any]) -> list:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQMapping
    from llmcompressor.modifiers.transform.awq import AWQModifier as AWQTransform

    groups = {"group_0": {"targets": ["Linear"], **recipe.scheme}}
    ignore = ignored(model, config.get("model_type"))
    if recipe.algorithm == "gptq":
        return [GPTQModifier(config_groups=groups, ignore=ignore, **recipe.options)]
    quantize = QuantizationModifier(config_groups=groups, ignore=ignore)
    if recipe.algorithm != "awq":
        return [quantize]
    mappings = awq_mappings(config)
    awq_options = dict(recipe.options)
    if mappings is not None:
        awq_options["mappings"] = [AWQMapping(smooth, balance) for smooth, balance in mappings]
    return [AWQTransform(**awq_options), quantize]


@contextmanager
def _no_pinning_without_accelerator():
    """llm-compressor's AWQ pins cached activations for faster host-to-GPU
    copies; pinning needs an accelerator, so without one it is skipped."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.cuda.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    setattr(IntermediatesCache, "pin_memory", lambda self, *args, **kwargs: None)  # noqa: B010 - patched for the call
    try:
        yield
    finally:
        setattr(IntermediatesCache, "pin_memory", original)  # noqa: B010


@contextmanager
def _layer_progress(ctx) -> Iterator[None]:
    """A job event as each decoder layer is calibrated and quantized, so
    `qfarm watch` shows "layer 3 of 32" during a long quantizing stage.
    llm-compressor's sequential pipeline calls LifecycleCallbacks.
    sequential_epoch_end once per traced subgraph: the embeddings, then one
    per decoder layer; no public hook reports it, so the call is wrapped."""
    from llmcompressor.core import LifecycleCallbacks

    layers = ctx.model_config.get("num_hidden_layers")
    original = LifecycleCallbacks.sequential_epoch_end
    done = [0]

    def epoch_end(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        done[0] += 1
        if isinstance(layers, int) and 1 < done[0] <= layers + 1:
            ctx.note(f"layer {done[0] - 1} of {layers} calibrated and quantized")
        return result

    setattr(LifecycleCallbacks, "sequential_epoch_end", epoch_end)  # noqa: B010 - wrapped for this call only
    try:
        yield
    finally:
        setattr(LifecycleCallbacks, "sequential_epoch_end", original)  # noqa: B010


def quantize(ctx, recipe: Recipe, calibrated: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_gpu = ctx.weights_on_gpu()
    ctx.facts["weights_on"] = "gpu" if on_gpu else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(ctx.model_dir, trust_remote_code=ctx.trust_remote_code)

    kwargs: dict[str, Any] = {}
    if calibrated:
        from datasets import Dataset

        ctx.stage(Stage.CALIBRATING)
        windows = ctx.calibration_windows(tokenizer)
        kwargs = dict(
            dataset=Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]}),
            num_calibration_samples=len(windows),
            max_seq_length=len(windows[0]),
            shuffle_calibration_samples=False,
        )
    ctx.stage(Stage.QUANTIZING, "weights on the GPU" if on_gpu else
              ("weights in CPU memory, onloaded to the GPU a layer at a time" if ctx.device.is_cuda else "on the CPU"))
    from llmcompressor import oneshot

    from worker.logs import quiet_loguru

    quiet_loguru()

    # Timed like the other engines, whose library calls load the weights
    # themselves (bitsandbytes quantizes as it loads, GPTQModel.load): loading,
    # quantizing, and writing the artifact. The load is also kept apart.
    # On a CPU, fp16 matrix products have no fast kernels: one 4096×384 by
    # 384×1024 product took 2.9 s in fp16 and 47 ms in fp32 on a 2-core
    # worker. Calibration runs in fp32 there, and the model goes back to its
    # own dtype before saving, so scales and unquantized weights are stored
    # as a GPU worker stores them.
    dtype = "auto" if ctx.device.is_cuda else torch.float32
    from llmcompressor.core import create_session

    # A session of the job's own: llm-compressor's global session keeps the
    # quantized model (its packed weights) alive after oneshot returns, and
    # on a GPU that memory was counted in the evaluation's serve figures
    # (3.6 GiB more for a W4 7B, bench/RESULTS.md §4).
    with create_session(), _no_pinning_without_accelerator(), _layer_progress(ctx), ctx.library_call():
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(ctx.model_dir, dtype=dtype, device_map="cuda:0" if on_gpu else None,
                                                     trust_remote_code=ctx.trust_remote_code)
        ctx.facts["weights_load_seconds"] = time.perf_counter() - start
        ctx.facts["calibration_dtype"] = str(model.dtype).removeprefix("torch.")
        layout.plain_linears(model, ctx.model_config.get("model_type"))
        with _expert_tokens(model, ctx, calibrated):
            oneshot(model=model, recipe=modifiers(recipe, model, ctx.model_config), moe_calibrate_all_experts=True, **kwargs)
        if not ctx.device.is_cuda:
            model.to(ctx.model_dtype())
        # Compression into the packed format happens while saving.
        model.save_pretrained(ctx.output_dir, save_compressed=True)
        _release(model)
        del model
    tokenizer.save_pretrained(ctx.output_dir)


@contextmanager
def _expert_tokens(model, ctx, calibrated: bool) -> Iterator[None]:
    """Linearize a mixture of experts' fused expert parameters into one
    nn.Linear per expert (llm-compressor's own `linearize_moe`, which oneshot
    would otherwise call itself) and, while calibrating, count the tokens
    the router sends each expert. Every expert is calibrated on every token
    (moe_calibrate_all_experts): the counts say how uneven the routing of the
    calibration text was, not how much each expert's statistics saw.

    The count is taken only in the passes whose activations feed the
    quantizer (llm-compressor disables its hooks for the passes that only
    propagate the quantized layer's output to the next)."""
    from llmcompressor.modeling.moe.conversion_mappings import set_save_conversion_mapping
    from llmcompressor.modeling.moe.linear_experts import LinearExperts2D
    from llmcompressor.modeling.moe.linearize import get_non_linearized_moes, linearize_moe
    from llmcompressor.modifiers.utils.hooks import HooksMixin

    if not get_non_linearized_moes(model):
        yield
        return
    linearize_moe(model)
    model_type = ctx.model_config.get("model_type")
    if layout.supported(model_type):
        # Saved under the architecture's own per-expert names (Mixtral's
        # w1/w3/w2: llm-compressor alone wrote gate_proj/up_proj/down_proj,
        # which vLLM does not read for Mixtral).
        set_save_conversion_mapping(model, layout.load_mapping(model_type)[1])
    experts = [(name, module) for name, module in model.named_modules() if isinstance(module, LinearExperts2D)]
    counts = {name: [0] * module.num_experts for name, module in experts}

    def counter(name: str):
        def hook(module, args) -> None:
            if HooksMixin._HOOKS_DISABLED or len(args) < 2:
                return
            routed = args[1].reshape(-1).bincount(minlength=module.num_experts).tolist()
            counts[name] = [a + b for a, b in zip(counts[name], routed, strict=False)]
        return hook

    handles = [module.register_forward_pre_hook(counter(name)) for name, module in experts]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    ctx.facts["moe"] = moe_facts(counts, calibrated, ctx.facts.get("calib_samples_used", 0) * ctx.facts.get("calib_seqlen", 0))


def moe_facts(counts: dict[str, list[int]], calibrated: bool, tokens: int) -> dict[str, Any]:
    """What the job records of a mixture of experts' calibration."""
    every = [n for c in counts.values() for n in c]
    facts: dict[str, Any] = {
        "expert_layers": len(counts), "experts_per_layer": max((len(c) for c in counts.values()), default=0),
        "experts_quantized_by": "linearized (llm-compressor linearize_moe)",
    }
    if not calibrated:
        return {**facts, "calibration": "none (data-free method)"}
    return {
        **facts, "calibration": "every expert on every token (moe_calibrate_all_experts)",
        "calibration_tokens": tokens,
        "tokens_routed_per_expert": {"min": min(every, default=0), "max": max(every, default=0),
                                     "experts_never_routed": sum(1 for n in every if n == 0)},
        # Per layer only while it stays small (a 48-layer, 128-expert model has 6,144 counts).
        **({"tokens_routed": counts} if len(every) <= 1024 else {}),
    }


def _release(model) -> None:
    """Drop every tensor of a model that is done with. The sequential
    pipeline's torch.fx tracing leaves generated code whose globals keep the
    traced modules alive after oneshot returns (found with gc on a CPU), so
    `del model` alone frees nothing; emptying each module's parameters and
    buffers frees the memory whatever still holds the modules."""
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name in list(store.keys()):
                del store[name]

