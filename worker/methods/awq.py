"""AWQ (api_client/contract/catalog/methods.py): compressed-tensors through
llm-compressor's AWQModifier; AutoAWQ's GEMM format through GPTQModel."""

from __future__ import annotations

from api_client.contract.catalog.methods import AWQ, AWQParams
from worker.context import JobContext
from worker.methods import implements


@implements(AWQ)
def quantize(ctx: JobContext, params: AWQParams, fmt: str) -> None:
    if fmt == "awq":
        from worker.engines import gptqmodel

        gptqmodel.quantize(ctx, method="awq", checkpoint_format="gemm", bits=params.bits,
                           group_size=params.group_size, sym=not params.zero_point)
        return
    from worker.engines import llm_compressor

    scheme = llm_compressor.int_weight_scheme(params.bits, params.group_size, not params.zero_point)
    llm_compressor.quantize(ctx, llm_compressor.Recipe("awq", scheme), calibrated=True)
