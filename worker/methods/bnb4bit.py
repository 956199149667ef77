"""bitsandbytes 4-bit (NF4 and FP4): weights are quantized as they load, with
optional double quantization of the scales; saved with save_pretrained and
loaded back by transformers with bitsandbytes installed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from worker.methods import register
from worker.methods.base import Method, Params, knob

COMPUTE_DTYPES = ("auto", "float16", "bfloat16", "float32")


@dataclass(frozen=True)
class BnB4BitParams(Params):
    double_quant: bool = knob(True, help="quantize the quantization scales too (saves ~0.4 bit/param)")
    compute_dtype: str = knob("auto", choices=COMPUTE_DTYPES, help="dtype of the matmuls; auto: the model's dtype")


class BnB4Bit(Method):
    formats = ("bitsandbytes",)
    Params = BnB4BitParams
    quant_type: ClassVar[str]

    def quantize(self, ctx, params: BnB4BitParams, fmt: str) -> None:
        from worker.engines import bitsandbytes

        bitsandbytes.quantize(ctx, load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                              bnb_4bit_use_double_quant=params.double_quant,
                              compute_dtype=params.compute_dtype)


@register
class NF4(BnB4Bit):
    name = "nf4"
    summary = "bitsandbytes NF4 (4-bit NormalFloat), double quantization by default"
    quant_type = "nf4"


@register
class FP4(BnB4Bit):
    name = "fp4"
    summary = "bitsandbytes FP4, double quantization by default"
    quant_type = "fp4"
