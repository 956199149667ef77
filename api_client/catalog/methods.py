"""Every method qfarm offers, as the client and the worker both know it:
name, formats, options, calibration, hardware. The code that runs each is
worker/methods/<name>.py."""

from __future__ import annotations

from dataclasses import dataclass

from api_client.catalog import MethodSpec, register
from api_client.catalog.options import Params, knob
from api_client.errors import SpecError

GROUP_SIZES = (32, 64, 128, -1)
COMPUTE_DTYPES = ("auto", "float16", "bfloat16", "float32")


@dataclass(frozen=True)
class GPTQParams(Params):
    bits: int = knob(4, choices=(4, 8), help="weight bits")
    group_size: int = knob(128, choices=GROUP_SIZES, help="columns sharing one scale; -1: one per output channel")
    act_order: bool = knob(True, help="quantize columns in order of activation size (static ordering: no inference cost)")
    symmetric: bool = knob(True, off="--asymmetric", help="symmetric scales (no zero point)")
    dampening: float = knob(0.01, low=0.0, high=1.0, help="fraction of the Hessian's mean diagonal added for stability")


@register
class GPTQ(MethodSpec):
    """Second-order (Hessian-aware) weight quantization from calibration
    activations: compressed-tensors through llm-compressor's GPTQModifier, or
    the classic GPTQ checkpoint format through GPTQModel."""

    name = "gptq"
    summary = "GPTQ, W4A16 group 128 by default"
    formats = ("compressed-tensors", "gptq")
    calibrated = True
    options = GPTQParams

    @classmethod
    def check_format(cls, params: GPTQParams, fmt: str) -> None:
        if fmt == "gptq" and params.group_size == -1 and params.act_order:
            raise SpecError("--format gptq cannot combine --group-size -1 with --act-order; pass --no-act-order")


@dataclass(frozen=True)
class AWQParams(Params):
    bits: int = knob(4, choices=(4,), help="weight bits")
    group_size: int = knob(128, choices=GROUP_SIZES, help="columns sharing one scale")
    zero_point: bool = knob(True, help="asymmetric scales with a zero point, as AutoAWQ writes them")


@register
class AWQ(MethodSpec):
    """Activation-aware scaling of salient channels before rounding:
    compressed-tensors through llm-compressor's AWQModifier, or the
    AutoAWQ-compatible GEMM format through GPTQModel."""

    name = "awq"
    summary = "AWQ, W4A16 group 128 with zero point by default"
    formats = ("compressed-tensors", "awq")
    calibrated = True
    options = AWQParams

    @classmethod
    def check_format(cls, params: AWQParams, fmt: str) -> None:
        if fmt == "awq" and params.group_size == -1:
            raise SpecError("--format awq (GEMM) needs a group size: choose 32, 64 or 128")


@dataclass(frozen=True)
class RTNParams(Params):
    bits: int = knob(4, choices=(4, 8), help="weight bits")
    group_size: int = knob(128, choices=GROUP_SIZES, help="columns sharing one scale; -1: one per output channel")
    symmetric: bool = knob(True, off="--asymmetric", help="symmetric scales (no zero point)")


@register
class RTN(MethodSpec):
    """Round-to-nearest, no calibration data: the baseline every calibrated
    method should beat."""

    name = "rtn"
    summary = "round-to-nearest, W4A16 group 128 by default, no calibration"
    formats = ("compressed-tensors",)
    options = RTNParams


@register
class FP8(MethodSpec):
    """FP8 (E4M3) weights per channel and activations per token, computed at
    run time. Needs FP8 tensor cores (compute capability 8.9: Ada, Hopper and
    newer), so jobs are routed to such workers only."""

    name = "fp8"
    summary = "FP8 dynamic (W8A8 float), Ada/Hopper GPUs only"
    formats = ("compressed-tensors",)
    min_capability = (8, 9)


@dataclass(frozen=True)
class BnB4BitParams(Params):
    double_quant: bool = knob(True, help="quantize the quantization scales too (saves ~0.4 bit/param)")
    compute_dtype: str = knob("auto", choices=COMPUTE_DTYPES, help="dtype of the matmuls; auto: the model's dtype")


@register
class NF4(MethodSpec):
    """bitsandbytes 4-bit NormalFloat, quantized as the weights load."""

    name = "nf4"
    summary = "bitsandbytes NF4 (4-bit NormalFloat), double quantization by default"
    formats = ("bitsandbytes",)
    options = BnB4BitParams


@register
class FP4(MethodSpec):
    """bitsandbytes 4-bit float, quantized as the weights load."""

    name = "fp4"
    summary = "bitsandbytes FP4, double quantization by default"
    formats = ("bitsandbytes",)
    options = BnB4BitParams


@dataclass(frozen=True)
class Int8Params(Params):
    threshold: float = knob(6.0, low=0.0, high=1000.0,
                            help="activation magnitude above which a feature is an outlier kept in fp16")


@register
class Int8(MethodSpec):
    """LLM.int8(): 8-bit weights with outlier features kept in fp16."""

    name = "int8"
    summary = "bitsandbytes LLM.int8() with outlier decomposition"
    formats = ("bitsandbytes",)
    options = Int8Params
