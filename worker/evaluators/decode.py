"""Decode speed at batch 1 on the reference load (for a compressed-tensors
artifact that is dense: the packed speed is the serving evaluator's), timed
as the serve pass times it (worker/serve_speed.py) so the two compare."""

from __future__ import annotations

from typing import Any

from worker import serve_speed
from worker.evaluators import Evaluator, Figures, Inputs, Loaded, register
from worker.gguf_runtime import LlamaCppModel

# Prompt tokens before a batch-1 decode.
PROMPT_TOKENS = 32


def decode_timing(model, inputs: Inputs) -> serve_speed.Timing | None:
    """Batch 1: `PROMPT_TOKENS` of the first window, then `decode_tokens`."""
    if inputs.decode_tokens < 2:
        return None
    if isinstance(model, LlamaCppModel):
        return model.decode_timing(inputs.windows[0][:PROMPT_TOKENS], inputs.decode_tokens)
    return serve_speed.measure(model, inputs.windows[0][:PROMPT_TOKENS], inputs.decode_tokens)


@register
class DecodeSpeed(Evaluator):
    name = "decode"
    required = True

    def measure(self, loaded: Loaded, inputs: Inputs, load: dict[str, Any]) -> dict[str, Any]:
        timing = decode_timing(loaded.model, inputs)
        return {"timing": timing.summary() if timing else {}, "kernel": loaded.kernel}

    def figures(self, baseline: dict[str, Any] | None, quantized: dict[str, Any]) -> Figures:
        base = (baseline or {}).get("timing") or {}
        quant = quantized["timing"]
        return Figures(columns=dict(tokens_per_s_baseline=base.get("decode_tokens_per_s"),
                                    tokens_per_s_quantized=quant.get("decode_tokens_per_s")),
                       metrics=dict(decode_kernel=quantized["kernel"], decode=quant or None, decode_baseline=base or None))
