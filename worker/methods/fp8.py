"""FP8 dynamic (api_client/contract/catalog/methods.py) through llm-compressor; the
job refuses a GPU without FP8 tensor cores even if routing was bypassed."""

from __future__ import annotations

from api_client.contract.catalog.methods import FP8
from worker.context import JobContext
from worker.methods import implements


@implements(FP8)
def quantize(ctx: JobContext, params, fmt: str) -> None:
    from worker.engines import llm_compressor

    assert FP8.min_capability is not None
    ctx.device.require_capability(FP8.min_capability, FP8.name)
    llm_compressor.quantize(ctx, llm_compressor.Recipe(None, llm_compressor.fp8_dynamic_scheme()), calibrated=False)
