"""AWQ: activation-aware scaling of salient channels before rounding.
Compressed-tensors output through llm-compressor's AWQModifier; the
AutoAWQ-compatible GEMM checkpoint format through GPTQModel."""

from __future__ import annotations

from dataclasses import dataclass

from api_client.errors import SpecError
from worker.methods import register
from worker.methods.base import Method, Params, knob


@dataclass(frozen=True)
class AWQParams(Params):
    bits: int = knob(4, choices=(4,), help="weight bits")
    group_size: int = knob(128, choices=(32, 64, 128, -1), help="columns sharing one scale")
    zero_point: bool = knob(True, help="asymmetric scales with a zero point, as AutoAWQ writes them")


@register
class AWQ(Method):
    name = "awq"
    summary = "AWQ, W4A16 group 128 with zero point by default"
    formats = ("compressed-tensors", "awq")
    calibrated = True
    Params = AWQParams

    @classmethod
    def check_format(cls, params: AWQParams, fmt: str) -> None:
        if fmt == "awq" and params.group_size == -1:
            raise SpecError("--format awq (GEMM) needs a group size: choose 32, 64 or 128")

    def quantize(self, ctx, params: AWQParams, fmt: str) -> None:
        if fmt == "awq":
            from worker.engines import gptqmodel

            gptqmodel.quantize(ctx, method="awq", checkpoint_format="gemm", bits=params.bits,
                               group_size=params.group_size, sym=not params.zero_point)
            return
        from worker.engines import llm_compressor

        modifier = llm_compressor.modifier(
            "AWQModifier", llm_compressor.int_weight_scheme(params.bits, params.group_size, not params.zero_point)
        )
        llm_compressor.quantize(ctx, [modifier], calibrated=True)
