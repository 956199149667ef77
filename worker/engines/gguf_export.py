"""Writing GGUF files: llama.cpp's own HF→GGUF converter for F16 and Q8_0,
AutoRound's torch port of llama.cpp's k-quants for Q4_K_M, Q5_K_M and Q6_K
(worker/methods/gguf.py says why these two).

The converter is llama.cpp's `conversion/` package (convert_hf_to_gguf.py
split into modules) as AutoRound 0.15.1 vendors it, imported through
AutoRound's loader, never fetched: AutoRound's download of a newer one from
GitHub is off unless AUTO_ROUND_GGUF_AUTO_UPDATE is set, and a worker leaves
it unset.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from api_client.errors import QFarmError, first_line
from worker.gpu import release_memory

# The converter writes these itself (its --outtype), in numpy: a Q8_0 of the
# 13.8M reference model took 1.8 s where AutoRound's pipeline took 55 s.
CONVERTER_TYPES = {"f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}
# GGML tensor types that are k-quants: a k-quant format's tensor written in
# another 2-D type is llama.cpp's per-tensor fallback (or its mix's choice).
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K")


def converter(model_dir: Path) -> Any:
    """llama.cpp's conversion package (AutoRound's copy), checked to know
    this model's architecture: a QFarmError naming it otherwise (AutoRound's
    own check logs and calls sys.exit)."""
    from auto_round.export.export_to_gguf.llama_cpp_conversion import get_conversion

    from worker.logs import quiet_autoround

    quiet_autoround()
    arch = (json.loads((model_dir / "config.json").read_text()).get("architectures") or ["?"])[0]
    try:
        return get_conversion(model_dir, auto_update=False)
    except NotImplementedError as exc:
        # AutoRound says "not supported" both for an architecture its map
        # lacks and for a module that failed to import (a gguf library too
        # old for it: api_client/contract/catalog/gguf_architectures.py); the cause
        # tells which.
        cause = f" ({type(exc.__cause__).__name__}: {first_line(exc.__cause__)})" if exc.__cause__ else ""
        raise QFarmError(f"llama.cpp's GGUF converter (AutoRound's copy) cannot write the architecture {arch}{cause}") from None


def _pre_tokenizer_by_structure(model_dir: Path) -> str | None:
    """llama.cpp's name for the model's BPE pre-tokenizer, read from what
    tokenizer.json declares. llama.cpp's converter recognises a pre-tokenizer
    only by the hash of a test string's tokens, which any vocabulary not
    published on the Hub (a team's own) misses; GPT-2's byte-level split is
    one regex whatever the vocabulary, and llama.cpp's `gpt-2` is that regex.
    Anything else stays refused: the evaluation checks that llama.cpp then
    tokenizes the evaluation text as the model's tokenizer does."""
    try:
        pre = json.loads((model_dir / "tokenizer.json").read_text()).get("pre_tokenizer") or {}
    except (OSError, ValueError):
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "gpt-2"
    return None


@contextmanager
def known_pre_tokenizer(conversion: Any, model_dir: Path) -> Iterator[None]:
    """While converting, a BPE pre-tokenizer the converter's hash list lacks
    is named by its structure (_pre_tokenizer_by_structure) where it can be;
    otherwise the conversion fails in one line."""
    import importlib

    base = importlib.import_module(f"{conversion.module.__name__}.base")
    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            name = _pre_tokenizer_by_structure(model_dir)
            if name is None:
                raise QFarmError("llama.cpp's converter does not know this model's BPE pre-tokenizer "
                                 "(tokenizer.json), and it is not GPT-2's byte-level split") from None
            return name

    setattr(base.TextModel, "get_vocab_base_pre", get_vocab_base_pre)  # noqa: B010 - patched for this conversion
    try:
        yield
    finally:
        setattr(base.TextModel, "get_vocab_base_pre", original)  # noqa: B010


def convert(ctx, fmt: str, dest: Path) -> None:
    """F16 or Q8_0 by llama.cpp's converter, as `convert_hf_to_gguf.py
    --outtype f16|q8_0` writes it."""
    import gguf

    conversion = converter(ctx.model_dir)
    hparams = conversion.ModelBase.load_hparams(ctx.model_dir, False)
    model_class = conversion.get_model_class(conversion.get_model_architecture(hparams, conversion.ModelType.TEXT))
    with known_pre_tokenizer(conversion, ctx.model_dir), ctx.library_call():
        model = model_class(ctx.model_dir, getattr(gguf.LlamaFileType, CONVERTER_TYPES[fmt]), dest, hparams=hparams)
        model.write()


def k_quant(ctx, fmt: str, dest: Path, windows: list[list[int]] | None) -> None:
    """A k-quant by AutoRound with no tuning (iters=0): llama.cpp's type mix
    and per-tensor fallbacks, its k-quant scale search, and with `windows`
    the importance matrix of those calibration tokens (AutoRound's
    `opt-RTN`: the squared activations of every linear layer's inputs
    weighing the search, as llama-imatrix's file does in llama-quantize)."""
    import torch
    from auto_round import AutoRound
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.logs import quiet_loguru

    quiet_loguru()
    conversion = converter(ctx.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(ctx.model_dir, trust_remote_code=ctx.trust_remote_code)
    on_gpu = ctx.weights_on_gpu()
    ctx.facts["weights_on"] = "gpu" if on_gpu else "cpu"
    # AutoRound moves a block at a time to the device it quantizes on. On a
    # CPU it would compute in bf16 (slower than fp32 there without AMX, and
    # a lossy copy of fp16 weights): amp=False keeps fp32.
    dtype = "auto" if ctx.device.is_cuda else torch.float32
    out = ctx.scratch_dir / f"autoround-{fmt}"
    with known_pre_tokenizer(conversion, ctx.model_dir), ctx.library_call():
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(ctx.model_dir, dtype=dtype, device_map="cuda:0" if on_gpu else None,
                                                     trust_remote_code=ctx.trust_remote_code)
        ctx.facts["weights_load_seconds"] = time.perf_counter() - start
        # With an imatrix AutoRound reads these windows (never its default
        # text, a Hub dataset); without one it reads no text at all.
        calibration = dict(dataset=[torch.tensor([w]) for w in windows], nsamples=len(windows),
                           seqlen=len(windows[0])) if windows else {}
        autoround = AutoRound(model, tokenizer=tokenizer, scheme=f"gguf:{fmt}", iters=0, disable_opt_rtn=not windows,
                              device_map=ctx.device.torch_device, amp=ctx.device.is_cuda, **calibration)
        autoround.quantize_and_save(str(out), format=f"gguf:{fmt}")
        del autoround, model
    # The next format loads the model afresh (AutoRound changed this one in place).
    release_memory(ctx.device)
    written = sorted(out.rglob("*.gguf"))
    if len(written) != 1:
        raise QFarmError(f"AutoRound wrote {len(written)} GGUF files for {fmt}, not one")
    shutil.move(written[0], dest)
    shutil.rmtree(out, ignore_errors=True)


def tensor_types(path: Path) -> dict[str, Any]:
    """What a GGUF file holds, read back from it: the count of tensors of
    each GGML type, the bytes of tensor data, and the 2-D tensors whose rows
    (ne0, the input features) are no multiple of 256 with the type each got:
    where a k-quant format wrote those in another type, that is llama.cpp's
    fallback, and the job says which."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    types: Counter[str] = Counter()
    short_rows: Counter[str] = Counter()
    row_lengths: set[int] = set()
    data_bytes = 0
    for t in reader.tensors:
        name = t.tensor_type.name
        types[name] += 1
        data_bytes += int(t.n_bytes)
        if len(t.shape) == 2 and int(t.shape[0]) % 256:
            short_rows[name] += 1
            row_lengths.add(int(t.shape[0]))
    return {"tensor_types": dict(sorted(types.items())), "tensor_bytes": data_bytes,
            "short_rows": {"row_lengths": sorted(row_lengths), "types": dict(sorted(short_rows.items()))}}
