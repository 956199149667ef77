"""RTN: round-to-nearest weight quantization, no calibration data.
The baseline every calibrated method should beat."""

from __future__ import annotations

from dataclasses import dataclass

from worker.methods import register
from worker.methods.base import Method, Params, knob


@dataclass(frozen=True)
class RTNParams(Params):
    bits: int = knob(4, choices=(4, 8), help="weight bits")
    group_size: int = knob(128, choices=(32, 64, 128, -1), help="columns sharing one scale; -1: one per output channel")
    symmetric: bool = knob(True, off="--asymmetric", help="symmetric scales (no zero point)")


@register
class RTN(Method):
    name = "rtn"
    summary = "round-to-nearest, W4A16 group 128 by default, no calibration"
    formats = ("compressed-tensors",)
    Params = RTNParams

    def quantize(self, ctx, params: RTNParams, fmt: str) -> None:
        from worker.engines import llm_compressor

        modifier = llm_compressor.modifier(
            "QuantizationModifier", llm_compressor.int_weight_scheme(params.bits, params.group_size, params.symmetric)
        )
        llm_compressor.quantize(ctx, [modifier], calibrated=False)
