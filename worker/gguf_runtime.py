"""A GGUF file loaded the way its users run it, to be measured: llama.cpp
through llama-cpp-python where the worker has it, else transformers' GGUF
loader, which dequantizes every tensor to a dense torch model (the figures
then say `transformers-gguf`, and measure the GGUF's weights, not llama.cpp's
kernels). Every figure names the runtime it ran on."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from api_client.errors import QFarmError, first_line

LLAMA_CPP = "llama.cpp-cpu"
TRANSFORMERS = "transformers-gguf"


class NoRuntime(QFarmError):
    """No GGUF runtime on this worker loads the file's architecture: its
    figures are recorded as errors and the job goes on (the file is not
    known to be broken, only unmeasured here)."""


def runtime() -> str:
    """The runtime this worker measures GGUF files with."""
    return _probe()[0]


def runtime_note() -> str | None:
    """Why llama.cpp is not the runtime although llama-cpp-python is installed."""
    return _probe()[1]


@functools.cache
def _probe() -> tuple[str, str | None]:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return TRANSFORMERS, None
    except Exception as exc:  # noqa: BLE001 - a package whose native library does not load (libgomp missing, …)
        return TRANSFORMERS, f"llama-cpp-python is installed but does not load ({type(exc).__name__}: {first_line(exc)})"
    return LLAMA_CPP, None


def is_gguf(path: Path) -> bool:
    return path.suffix == ".gguf" and path.is_file()


class LlamaCppModel:
    """A GGUF file in llama.cpp, as a job measures it: the log-likelihood of
    token windows (the same windows as the original model's), greedy decode
    speed at batch 1, tokenization, and the bytes of weights it holds. The
    CPU build (what the registry's source builds without CUDA): its figures
    are CPU figures, on every worker."""

    kernel = LLAMA_CPP

    def __init__(self, path: Path, n_ctx: int):
        from llama_cpp import Llama

        self.path = path
        threads = len(os.sched_getaffinity(0))
        # logits_all: every position's logits, for the perplexity of a window.
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=min(n_ctx, 512), n_threads=threads,
                         n_threads_batch=threads, logits_all=True, n_gpu_layers=0, verbose=False)

    def close(self) -> None:
        self.llm.close()

    def weights_bytes(self) -> int:
        """llama_model_size: the tensors as llama.cpp holds them (mmapped
        from the file, in their GGUF types)."""
        return int(self.llm._model.size())

    def window_losses(self, windows: list[list[int]], observe: Any = None) -> list[float]:
        """The summed negative log-likelihood of each window's tokens given
        the ones before it, as the torch evaluators compute it for the
        original (worker/evaluators/perplexity.window_losses), and
        `observe(window, logits[1, positions, vocabulary])` for the KL
        divergence."""
        import numpy as np
        import torch

        losses = []
        for i, window in enumerate(windows):
            self.llm.reset()
            self.llm.eval(window)
            logits = np.asarray(self.llm.scores[: len(window)], dtype=np.float32)
            head = logits[:-1].astype(np.float64)
            top = head.max(axis=1, keepdims=True)
            log_z = top[:, 0] + np.log(np.exp(head - top).sum(axis=1))
            targets = np.asarray(window[1:])
            losses.append(float((log_z - head[np.arange(len(targets)), targets]).sum()))
            if observe is not None:
                observe(i, torch.from_numpy(logits)[None])
        return losses

    def perplexity(self, windows: list[list[int]]) -> tuple[float, int]:
        count = len(windows) * (len(windows[0]) - 1)
        return math.exp(sum(self.window_losses(windows)) / count), count

    def decode_timing(self, prompt: list[int], new_tokens: int, repeats: int = 2) -> Any:
        """Greedy generation at batch 1 of `new_tokens` after `prompt`, timed
        as worker/serve_speed.py times a torch model (a warm-up run first,
        the prefill apart from the decode steps), named `llama.cpp-cpu`."""
        import numpy as np

        from worker.serve_speed import Timing

        timing = Timing(LLAMA_CPP, 1, len(prompt), new_tokens)
        for run in range(repeats + 1):
            self.llm.reset()
            start = time.perf_counter()
            self.llm.eval(prompt)
            prefilled = time.perf_counter()
            tokens = [int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))]
            for _ in range(new_tokens - 1):
                self.llm.eval([tokens[-1]])
                tokens.append(int(np.argmax(self.llm.scores[self.llm.n_tokens - 1])))
            if run:  # the first run warms up
                timing.prefill_s.append(prefilled - start)
                timing.decode_s.append(time.perf_counter() - prefilled)
                timing.tokens = [tokens]
        return timing

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode(), add_bos=False, special=False))


def load(path: Path, device: Any, n_ctx: int, transformers_only: bool = False) -> Any:
    """`path` in this worker's GGUF runtime (or, with `transformers_only`,
    in transformers' loader, for what needs a torch model: lm-eval)."""
    if runtime() == LLAMA_CPP and not transformers_only:
        return LlamaCppModel(path, n_ctx)
    return load_transformers(path, device)


def load_transformers(path: Path, device: Any) -> Any:
    """transformers' GGUF loader: every tensor dequantized (gguf's numpy
    dequantizers) into a dense model, fp32 on a CPU, bf16 on a GPU."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.is_cuda else torch.float32
    with _unsupported(path):
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                     device_map={"": 0} if device.is_cuda else {"": "cpu"})
    model.eval()
    return model


@contextlib.contextmanager
def _unsupported(path: Path) -> Iterator[None]:
    """transformers' GGUF loader knows fewer architectures than llama.cpp:
    an architecture it does not know is a runtime this worker lacks."""
    try:
        yield
    except ValueError as exc:
        if "not supported" not in str(exc):
            raise
        raise NoRuntime(f"{path.name}: transformers' GGUF loader does not support it ({first_line(exc)}), and this "
                        f"worker has no llama-cpp-python") from None


def tokenize(path: Path, text: str) -> tuple[str, list[int]]:
    """`text` as the GGUF file's own tokenizer splits it (no BOS), and the
    runtime that did: llama.cpp's (the vocabulary alone is loaded), else the
    tokenizer transformers rebuilds from the file."""
    if runtime() == LLAMA_CPP:
        from llama_cpp import Llama

        vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
        try:
            return LLAMA_CPP, list(vocab.tokenize(text.encode(), add_bos=False, special=False))
        finally:
            vocab.close()
    from transformers import AutoTokenizer

    with _unsupported(path):
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return TRANSFORMERS, tokenizer(text, add_special_tokens=False)["input_ids"]
