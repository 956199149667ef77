"""LLM.int8() (api_client/contract/catalog/methods.py) through bitsandbytes."""

from __future__ import annotations

from api_client.contract.catalog.methods import Int8, Int8Params
from worker.context import JobContext
from worker.methods import implements


@implements(Int8)
def quantize(ctx: JobContext, params: Int8Params, fmt: str) -> None:
    from worker.engines import bitsandbytes

    bitsandbytes.quantize(ctx, load_in_8bit=True, llm_int8_threshold=params.threshold)
