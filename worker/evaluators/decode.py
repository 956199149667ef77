"""Decode speed at batch 1 on the reference load (for a compressed-tensors
artifact that is dense: the packed speed is the serving evaluator's)."""

from __future__ import annotations

import time
from typing import Any

from worker.evaluators import Evaluator, Figures, Inputs, Loaded, register
from worker.gguf_runtime import LlamaCppModel


def decode_speed(model, prompt: list[int], new_tokens: int) -> float | None:
    """Tokens per second generating `new_tokens` greedily at batch 1."""
    import torch

    if isinstance(model, LlamaCppModel):
        return model.decode_speed(prompt, new_tokens)
    if new_tokens <= 0:
        return None
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    kwargs: dict = {"do_sample": False}
    if model.generation_config.pad_token_id is None:
        kwargs["pad_token_id"] = model.generation_config.eos_token_id
    with torch.inference_mode():
        # Warm up with the same call: the first generate of a process pays
        # one-time costs (kernel selection, allocator growth, lazy imports)
        # that a short warm-up was seen not to cover.
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        _sync(device)
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        _sync(device)
        elapsed = time.perf_counter() - start
    generated = out.shape[1] - ids.shape[1]
    return generated / elapsed if elapsed > 0 else None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


@register
class DecodeSpeed(Evaluator):
    name = "decode"
    baseline_always = True
    required = True

    def measure(self, loaded: Loaded, inputs: Inputs, load: dict[str, Any]) -> dict[str, Any]:
        return {"tokens_per_s": decode_speed(loaded.model, inputs.windows[0][:32], inputs.decode_tokens),
                "kernel": loaded.kernel}

    def figures(self, baseline: dict[str, Any] | None, quantized: dict[str, Any]) -> Figures:
        return Figures(columns=dict(tokens_per_s_baseline=baseline["tokens_per_s"] if baseline else None,
                                    tokens_per_s_quantized=quantized["tokens_per_s"]),
                       metrics=dict(decode_kernel=quantized["kernel"]))
