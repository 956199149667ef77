"""RTN (api_client/contract/catalog/methods.py) through llm-compressor's
QuantizationModifier, no calibration."""

from __future__ import annotations

from api_client.contract.catalog.methods import RTN, RTNParams
from worker.context import JobContext
from worker.methods import implements


@implements(RTN)
def quantize(ctx: JobContext, params: RTNParams, fmt: str) -> None:
    from worker.engines import llm_compressor

    scheme = llm_compressor.int_weight_scheme(params.bits, params.group_size, params.symmetric)
    llm_compressor.quantize(ctx, llm_compressor.Recipe(None, scheme), calibrated=False)
