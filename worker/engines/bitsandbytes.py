"""bitsandbytes through transformers' BitsAndBytesConfig: weights are
quantized as they are loaded onto the device, then saved with save_pretrained.

transformers replaces the layers that are exactly nn.Linear, except those
its skip list names. The list qfarm gives is transformers' own default (the
LM head and what is tied to it) plus the layers the architecture keeps in
full precision: a Qwen2-MoE's `shared_expert_gate` is an nn.Linear, and was
quantized. Falcon is built with nn.Linear layers (worker/layout.py), which
bitsandbytes otherwise skipped all of: the job "succeeded" with nothing
quantized.
"""

from __future__ import annotations

from typing import Any

from api_client.contract.catalog import architectures
from api_client.contract.states import Stage
from worker import layout


def skip_modules(ctx) -> list[str]:
    """transformers' default skip list for this model, and the layers the
    architecture keeps in full precision (as regular expressions, which its
    skip list takes)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.quantizers.base import get_keys_to_not_convert

    config = AutoConfig.from_pretrained(ctx.model_dir, trust_remote_code=ctx.trust_remote_code)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=ctx.trust_remote_code)
    model_type = ctx.model_config.get("model_type")
    return sorted(set(get_keys_to_not_convert(skeleton))) + architectures.keep_patterns(model_type)


def quantize(ctx, compute_dtype: str | None = None, **config: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tokenizer = AutoTokenizer.from_pretrained(ctx.model_dir, trust_remote_code=ctx.trust_remote_code)
    if compute_dtype is not None:
        dtype = ctx.model_dtype() if compute_dtype == "auto" else getattr(torch, compute_dtype)
        config["bnb_4bit_compute_dtype"] = dtype
    config["llm_int8_skip_modules"] = skip_modules(ctx)
    ctx.facts["weights_on"] = "gpu" if ctx.device.is_cuda else "cpu"
    ctx.stage(Stage.QUANTIZING, "bitsandbytes quantizes the weights as they load")
    model_type = ctx.model_config.get("model_type")
    with ctx.library_call():
        with layout.built(model_type if model_type == "falcon" else None):
            model = AutoModelForCausalLM.from_pretrained(
                ctx.model_dir, quantization_config=BitsAndBytesConfig(**config), dtype="auto",
                device_map={"": ctx.device.torch_device}, trust_remote_code=ctx.trust_remote_code,
            )
        model.save_pretrained(ctx.output_dir)
    tokenizer.save_pretrained(ctx.output_dir)
