"""GPTQ (api_client/contract/catalog/methods.py): compressed-tensors through
llm-compressor's GPTQModifier; the classic GPTQ format through GPTQModel."""

from __future__ import annotations

from api_client.contract.catalog.methods import GPTQ, GPTQParams
from worker.context import JobContext
from worker.methods import implements


@implements(GPTQ)
def quantize(ctx: JobContext, params: GPTQParams, fmt: str) -> None:
    if fmt == "gptq":
        from worker.engines import gptqmodel

        gptqmodel.quantize(ctx, method="gptq", checkpoint_format="gptq", bits=params.bits,
                           group_size=params.group_size, sym=params.symmetric,
                           act_group_aware=params.act_order, damp_percent=params.dampening)
        return
    from worker.engines import llm_compressor

    scheme = llm_compressor.int_weight_scheme(params.bits, params.group_size, params.symmetric)
    options = dict(dampening_frac=params.dampening, actorder="static" if params.act_order else None)
    llm_compressor.quantize(ctx, llm_compressor.Recipe("gptq", scheme, options), calibrated=True)
