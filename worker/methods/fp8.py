"""FP8 (E4M3) weights per channel and activations per token, computed at run
time: no calibration. Needs FP8 tensor cores (compute capability 8.9: Ada,
Hopper and newer) to run, so jobs are routed to such workers only."""

from __future__ import annotations

from worker.methods import register
from worker.methods.base import Method


@register
class FP8(Method):
    name = "fp8"
    summary = "FP8 dynamic (W8A8 float), Ada/Hopper GPUs only"
    formats = ("compressed-tensors",)
    min_capability = (8, 9)

    def quantize(self, ctx, params, fmt: str) -> None:
        from worker.engines import llm_compressor

        ctx.device.require_capability(self.min_capability, self.name)
        llm_compressor.quantize(ctx, [llm_compressor.modifier("QuantizationModifier", "FP8_DYNAMIC")], calibrated=False)
