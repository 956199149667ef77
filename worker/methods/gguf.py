"""GGUF (api_client/contract/catalog/methods.py): one .gguf file per format asked for,
in the artifact directory, each measured as a GGUF runtime loads it
(worker/gguf_runtime.py).

Which code writes the files, and why (investigated 2026-11-29 on this
project's environment; figures from a 2-core CPU shared with other work):

- GPTQModel 7.6's GGUF method does not write a .gguf file. Its
  GGUFTorchLinear keeps each linear layer's GGUF blocks in a uint8 `qweight`
  buffer (rows padded to the block size, `padded_in_features`), saved as a
  safetensors checkpoint with a `quantization_config` that only GPTQModel's
  own gguf kernels load; nothing in the package writes GGUF (no GGUFWriter),
  and `q4_k_m` is Q4_K for every linear layer, not llama.cpp's Q4_K_M mix.
- `gguf` 0.19 is llama.cpp's Python library: reader, writer, and a numpy
  quantizer without the k-quants.
- llama-cpp-python 0.3.36 builds llama.cpp from source (no wheel in the
  registry; the build took over 40 min on the shared 2-core machine) and
  exposes `llama_model_quantize` with an importance matrix: the reference
  quantizer, but no CI or worker image installs it without that build.
- AutoRound 0.15.1, already installed as a dependency of llm-compressor,
  vendors llama.cpp's HF→GGUF converter (its `conversion/` package) and
  packs the k-quants in torch on the job's device: llama.cpp's per-tensor
  type choice (Q4_K_M's Q6_K for some attn_v/ffn_down, the Q5_0/Q5_1/Q8_0
  fallbacks for rows that are no multiple of 256) and its scale searches
  (make_qkx2_quants' 20 steps from -1 by 0.1; with an importance matrix
  make_qkx3_quants' 36 steps from -0.9 by 0.05), with the matrix computed
  from calibration windows as llama-imatrix does. It needs `gguf`, and
  `sentencepiece` for Llama tokenizers (both in the worker extra).

So: F16 and Q8_0 come from llama.cpp's converter itself (`--outtype`,
numpy: the reference model's Q8_0 in 1.8 s, where AutoRound's pipeline took
55 s for the same tensors), the k-quants from AutoRound (iters=0; with the
importance matrix unless --no-imatrix). The k-quant search is slow in torch
on a CPU (Q4_K_M with the matrix: 5.5 min for the reference model, most of
it the 200-step search of the Q5_0 fallback on its 384-wide rows) and runs
on the GPU on a GPU worker. Every file is checked by loading it in a GGUF
runtime, llama.cpp where llama-cpp-python is installed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from api_client.contract.catalog.methods import GGUF, K_QUANTS, GGUFParams
from api_client.contract.states import Stage
from api_client.errors import QFarmError
from worker import gguf_runtime, texts
from worker.context import JobContext
from worker.engines import gguf_export
from worker.methods import implements

# The converter's own test of a pre-tokenizer (whitespace runs, digits,
# apostrophes, non-Latin scripts, emoji), after a page of the builtin book.
TOKENIZER_PROBE = ("\n \n\n \t\t 3 33 333 3333 3.3 3...3 I've been 'told he's there, 'RE you sure? We'Ve a'lL "
                   "нещо на Български ?我想在apple工作1314151天～ 🚀 (normal) ✅ 🦙🦙 ------======= ```````")


def artifact_name(fmt: str) -> str:
    """The file a format is written to, in the artifact directory."""
    return f"model-{fmt}.gguf"


@implements(GGUF)
def quantize(ctx: JobContext, params: GGUFParams, fmt: str) -> None:
    formats = fmt.split(",")
    # An architecture the converter does not know fails here, before any weight is read.
    gguf_export.converter(ctx.model_dir)
    windows = None
    if GGUF.needs_calibration(params, fmt):
        from transformers import AutoTokenizer

        ctx.stage(Stage.CALIBRATING)
        windows = ctx.calibration_windows(AutoTokenizer.from_pretrained(ctx.model_dir, trust_remote_code=ctx.trust_remote_code))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctx.model_dir, trust_remote_code=ctx.trust_remote_code)
    if gguf_runtime.runtime_note():
        ctx.note(f"GGUF files are measured with transformers' loader: {gguf_runtime.runtime_note()}")
    files = {}
    for n, f in enumerate(formats, 1):
        imatrix = windows is not None and f in K_QUANTS
        how = ("llama.cpp's converter" if f in gguf_export.CONVERTER_TYPES else
               "AutoRound, " + (f"an importance matrix of {len(windows)} × {len(windows[0])} tokens" if imatrix and windows
                                else "no importance matrix"))
        ctx.stage(Stage.QUANTIZING, f"{f} ({n} of {len(formats)}): {how}")
        dest = ctx.output_dir / artifact_name(f)
        start = time.perf_counter()
        if f in gguf_export.CONVERTER_TYPES:
            gguf_export.convert(ctx, f, dest)
        else:
            gguf_export.k_quant(ctx, f, dest, windows if imatrix else None)
        written = gguf_export.tensor_types(dest)
        files[f] = {"file": dest.name, "bytes": dest.stat().st_size, "seconds": time.perf_counter() - start,
                    "producer": how, "imatrix": imatrix, **written, "tokenizer_check": check_tokenizer(dest, tokenizer)}
        ctx.targets[f] = dest
        fallback = _fallback(f, written)
        if fallback:
            files[f]["fallback"] = fallback
            ctx.note(f"{f}: {fallback}")
    ctx.facts["gguf"] = files


def _fallback(fmt: str, written: dict) -> str | None:
    """Which tensors a k-quant format could not write as k-quants, as read
    back from the file (rows that are no multiple of 256)."""
    short = written["short_rows"]
    fell = {t: n for t, n in short["types"].items() if t not in gguf_export.K_TYPES}
    if fmt not in K_QUANTS or not fell:
        return None
    rows = "/".join(str(r) for r in short["row_lengths"])
    kinds = ", ".join(f"{n} as {t}" for t, n in sorted(fell.items()))
    return (f"k-quant rows must be a multiple of 256: {sum(fell.values())} tensors with rows of {rows} were written "
            f"in llama.cpp's fallback types ({kinds})")


def check_tokenizer(path: Path, tokenizer: Any) -> dict[str, Any]:
    """The GGUF's tokenizer, in the worker's GGUF runtime, must split text as
    the model's own does: a GGUF whose vocabulary, merges or pre-tokenizer
    came out wrong loads and runs, but feeds its model other tokens than it
    was trained on. The job fails on a difference."""
    text = texts.builtin_text("eval")[:6000] + TOKENIZER_PROBE
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    try:
        runtime, got = gguf_runtime.tokenize(path, text)
    except gguf_runtime.NoRuntime as exc:
        return {"runtime": None, "error": str(exc)}
    if got != expected:
        at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), min(len(got), len(expected)))
        raise QFarmError(f"{path.name}: {runtime} tokenizes text differently from the model's tokenizer (first at token {at} "
                         f"of {len(expected)}): the GGUF's tokenizer is not the model's")
    return {"runtime": runtime, "tokens": len(expected), "same": True}
