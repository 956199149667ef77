"""KL divergence of the artifact's next-token distribution from the
original's, on the same evaluation tokens: the measure llama.cpp reports for
quantized models. Perplexity only sees the probability of the token that
came next; two models can agree on it and still disagree on the rest of the
distribution, and that damage averages away in a perplexity ratio.

The perplexity pass computes both models' logits on the same windows, one
model after the other in the job's process (worker/evaluators/__init__.py).
The original's log-probabilities are written to the job's scratch disk as
fp16 while its pass runs, and read back position by position while the
artifact's runs, so neither model's logits need to be in memory together.
They take vocabulary × 2 bytes a token (64 KiB for a 32k vocabulary), so
the tokens are capped (MAX_BYTES): the first positions of the windows in
order, as many as fit; `kl_tokens` says how many were covered.

Nothing here fails the perplexity it rides on: an error (a vocabulary that
differs, a full disk) stops the divergence and is recorded as `kl_error`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The original's log-probabilities kept on disk: 8,192 tokens of a 32k
# vocabulary, 2,048 of a 128k one.
MAX_BYTES = 512 * 2**20
# Positions turned into log-probabilities at a time (fp32: 128 MiB for a 128k vocabulary).
CHUNK = 256


class Divergence:
    """One model's side of the comparison: `write` (the original) stores its
    log-probabilities, `read` (the artifact) compares against them."""

    def __init__(self, path: Path, mode: str, tokens: int, max_bytes: int | None = None):
        # `tokens`: how many the windows predict (the store holds no more).
        self.path, self.mode, self.tokens = path, mode, tokens
        self.max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        self.error: str | None = None
        self._store: Any = None
        self._vocab: int | None = None
        self._max_tokens = 0
        self._kl: list[Any] = []  # per-token KL, a tensor a chunk
        self._same_top = 0
        self._window_kl: dict[int, list[float]] = {}

    @classmethod
    def for_role(cls, role: str, scratch: Path, tokens: int) -> Divergence:
        path = scratch / "kl" / "original-logprobs.npy"
        return cls(path, "write" if role == "baseline" else "read", tokens)

    def observe(self, first_window: int, logits: Any) -> None:
        """Take a batch of windows' logits [batch, positions, vocabulary]
        (windows first_window, first_window+1, …); the last position
        predicts past the window and is left out, as perplexity leaves it."""
        if self.error is not None:
            return
        try:
            self._observe(first_window, logits)
        except Exception as exc:  # noqa: BLE001 - recorded; the perplexity stands without it
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            self._store = None

    def _open(self, vocab: int) -> None:
        import numpy as np

        self._vocab = vocab
        self._max_tokens = max(1, min(self.tokens, self.max_bytes // (2 * vocab)))
        if self.mode == "write":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._store = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float16, shape=(self._max_tokens, vocab))
        else:
            self._store = np.load(self.path, mmap_mode="r")
            if self._store.shape[1] != vocab:
                raise ValueError(f"the artifact's vocabulary ({vocab}) differs from the original's ({self._store.shape[1]})")
            self._max_tokens = self._store.shape[0]

    def _observe(self, first_window: int, logits: Any) -> None:
        import torch

        batch, positions, vocab = logits.shape
        if self._store is None:
            self._open(vocab)
        per_window = positions - 1
        for b in range(batch):
            base = (first_window + b) * per_window
            for start in range(0, per_window, CHUNK):
                first = base + start
                if first >= self._max_tokens:
                    return
                end = min(start + CHUNK, per_window, start + self._max_tokens - first)
                logprobs = logits[b, start:end].float().log_softmax(-1)
                rows = slice(first, first + end - start)
                if self.mode == "write":
                    self._store[rows] = logprobs.to(torch.float16).cpu().numpy()
                    continue
                reference = torch.from_numpy(self._store[rows].astype("float32")).to(logprobs.device)
                # fp16 rounding leaves the stored distribution a hair off 1: renormalized.
                reference = reference.log_softmax(-1)
                kl = (reference.exp() * (reference - logprobs)).sum(-1).clamp_min(0)
                self._kl.append(kl.cpu())
                self._same_top += int((reference.argmax(-1) == logprobs.argmax(-1)).sum())
                self._window_kl.setdefault(first_window + b, []).extend(kl.tolist())

    def finish(self) -> None:
        if self.mode == "write" and self._store is not None:
            self._store.flush()
        self._store = None

    def figures(self) -> dict[str, Any]:
        """The artifact's side: mean and 99th percentile of the per-token KL
        (nats), its 95 % interval bootstrapped over windows, the share of
        tokens whose most likely next token is the original's, and how many
        tokens that covered."""
        if self.error is not None:
            return {"kl_error": self.error}
        if not self._kl:
            return {"kl_error": "no tokens compared"}
        import numpy as np
        import torch

        from api_client.contract import stats

        kl = torch.cat(self._kl).double().numpy()
        windows = list(self._window_kl.values())
        sums, counts = [sum(w) for w in windows], [len(w) for w in windows]
        interval = stats.bootstrap_interval(lambda idx: sum(sums[i] for i in idx) / sum(counts[i] for i in idx),
                                            len(windows))
        return {"kl_divergence": float(kl.mean()), "kl_divergence_p99": float(np.percentile(kl, 99)),
                "kl_divergence_max": float(kl.max()), "kl_interval": list(interval) if interval else None,
                "kl_same_top": self._same_top / kl.size, "kl_tokens": int(kl.size), "kl_windows": len(windows)}
