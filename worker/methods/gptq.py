"""GPTQ: second-order (Hessian-aware) weight quantization from calibration
activations. Compressed-tensors output through llm-compressor's GPTQModifier;
the classic GPTQ checkpoint format through GPTQModel."""

from __future__ import annotations

from dataclasses import dataclass

from api_client.errors import SpecError
from worker.methods import register
from worker.methods.base import Method, Params, knob


@dataclass(frozen=True)
class GPTQParams(Params):
    bits: int = knob(4, choices=(4, 8), help="weight bits")
    group_size: int = knob(128, choices=(32, 64, 128, -1), help="columns sharing one scale; -1: one per output channel")
    act_order: bool = knob(True, help="quantize columns in order of activation size (static ordering: no inference cost)")
    symmetric: bool = knob(True, off="--asymmetric", help="symmetric scales (no zero point)")
    dampening: float = knob(0.01, low=0.0, high=1.0, help="fraction of the Hessian's mean diagonal added for stability")


@register
class GPTQ(Method):
    name = "gptq"
    summary = "GPTQ, W4A16 group 128 by default"
    formats = ("compressed-tensors", "gptq")
    calibrated = True
    Params = GPTQParams

    @classmethod
    def check_format(cls, params: GPTQParams, fmt: str) -> None:
        if fmt == "gptq" and params.group_size == -1 and params.act_order:
            raise SpecError("--format gptq cannot combine --group-size -1 with --act-order; pass --no-act-order")

    def quantize(self, ctx, params: GPTQParams, fmt: str) -> None:
        if fmt == "gptq":
            from worker.engines import gptqmodel

            gptqmodel.quantize(ctx, method="gptq", checkpoint_format="gptq", bits=params.bits,
                               group_size=params.group_size, sym=params.symmetric,
                               act_group_aware=params.act_order, damp_percent=params.dampening)
            return
        from worker.engines import llm_compressor

        modifier = llm_compressor.modifier(
            "GPTQModifier", llm_compressor.int_weight_scheme(params.bits, params.group_size, params.symmetric),
            dampening_frac=params.dampening, actorder="static" if params.act_order else None,
        )
        llm_compressor.quantize(ctx, [modifier], calibrated=True)
