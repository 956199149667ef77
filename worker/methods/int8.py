"""bitsandbytes LLM.int8(): 8-bit weights with outlier features kept in fp16
(mixed-precision decomposition above the outlier threshold)."""

from __future__ import annotations

from dataclasses import dataclass

from worker.methods import register
from worker.methods.base import Method, Params, knob


@dataclass(frozen=True)
class Int8Params(Params):
    threshold: float = knob(6.0, low=0.0, high=1000.0, help="activation magnitude above which a feature is an outlier kept in fp16")


@register
class Int8(Method):
    name = "int8"
    summary = "bitsandbytes LLM.int8() with outlier decomposition"
    formats = ("bitsandbytes",)
    Params = Int8Params

    def quantize(self, ctx, params: Int8Params, fmt: str) -> None:
        from worker.engines import bitsandbytes

        bitsandbytes.quantize(ctx, load_in_8bit=True, llm_int8_threshold=params.threshold)
