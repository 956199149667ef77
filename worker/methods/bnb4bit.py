"""NF4 and FP4 (api_client/contract/catalog/methods.py): bitsandbytes 4-bit, the
weights quantized as they load, saved with save_pretrained."""

from __future__ import annotations

from api_client.contract.catalog.methods import FP4, NF4, BnB4BitParams
from worker.context import JobContext
from worker.methods import implements


def _four_bit(quant_type: str):
    def quantize(ctx: JobContext, params: BnB4BitParams, fmt: str) -> None:
        from worker.engines import bitsandbytes

        bitsandbytes.quantize(ctx, load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=params.double_quant, compute_dtype=params.compute_dtype)
    return quantize


implements(NF4)(_four_bit("nf4"))
implements(FP4)(_four_bit("fp4"))
