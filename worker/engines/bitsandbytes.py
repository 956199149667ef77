"""bitsandbytes through transformers' BitsAndBytesConfig: weights are
quantized as they are loaded onto the device, then saved with save_pretrained."""

from __future__ import annotations

from typing import Any

from api_client.states import Stage


def quantize(ctx, compute_dtype: str | None = None, **config: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tokenizer = AutoTokenizer.from_pretrained(ctx.model_dir, trust_remote_code=ctx.trust_remote_code)
    if compute_dtype is not None:
        dtype = ctx.model_dtype() if compute_dtype == "auto" else getattr(torch, compute_dtype)
        config["bnb_4bit_compute_dtype"] = dtype
    ctx.facts["weights_on"] = "gpu" if ctx.device.is_cuda else "cpu"
    ctx.stage(Stage.QUANTIZING, "bitsandbytes quantizes the weights as they load")
    with ctx.library_call():
        model = AutoModelForCausalLM.from_pretrained(
            ctx.model_dir, quantization_config=BitsAndBytesConfig(**config), dtype="auto",
            device_map={"": ctx.device.torch_device}, trust_remote_code=ctx.trust_remote_code,
        )
        model.save_pretrained(ctx.output_dir)
    tokenizer.save_pretrained(ctx.output_dir)

