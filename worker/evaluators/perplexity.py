"""Perplexity on the evaluation windows, on the reference load: the ratio
quantized / original is qfarm's first accuracy figure. The load it ran on is
named (`ppl_kernel`): under a cap too small for the dequantized artifact the
reference load is the packed one (loading.packed_reference_reason); a GGUF
file's is llama.cpp's (`llama.cpp-cpu`) where the worker has it.

Its uncertainty: both models run the same windows, so the ratio's 95 %
interval is a paired bootstrap over windows (a drawn window brings both
models' losses; api_client/contract/stats.py). The same forward passes give the KL
divergence of the artifact's next-token distribution from the original's
(worker/evaluators/divergence.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from api_client.contract import stats
from worker.evaluators import Evaluator, Figures, Inputs, Loaded, register
from worker.evaluators.divergence import Divergence
from worker.gguf_runtime import LlamaCppModel

# Tokens per forward batch: bounds the logits' memory (tokens × vocabulary × 4 bytes).
TOKENS_PER_BATCH = 4096


def window_losses(model, windows: list[list[int]], tokens_per_batch: int = TOKENS_PER_BATCH,
                  positions_per_loss: int | None = None,
                  observe: Callable[[int, Any], None] | None = None) -> list[float]:
    """The summed negative log-likelihood of each window, `tokens_per_batch`
    tokens a forward pass. `positions_per_loss` takes the loss that many
    positions at a time, so no fp32 copy of a whole batch's logits is made
    (the serving pass: its peak is then the forward pass's; 0.25 GiB less
    for a 2048-token window of a 32k vocabulary). `observe(first_window,
    logits)` sees each batch's logits (the KL divergence)."""
    import torch

    device = next(model.parameters()).device
    seqlen = len(windows[0])
    batch = max(1, tokens_per_batch // seqlen)
    step = positions_per_loss or seqlen - 1
    losses: list[float] = []
    with torch.inference_mode():
        for i in range(0, len(windows), batch):
            ids = torch.tensor(windows[i:i + batch], device=device)
            logits = model(ids).logits
            nll = torch.zeros(ids.shape[0], dtype=torch.float64, device=device)
            # Token t predicts token t+1: the last logit has no target.
            for start in range(0, seqlen - 1, step):
                end = min(start + step, seqlen - 1)
                part = logits[:, start:end].float()
                loss = torch.nn.functional.cross_entropy(
                    part.reshape(-1, part.shape[-1]), ids[:, start + 1:end + 1].reshape(-1), reduction="none")
                nll += loss.view(ids.shape[0], -1).sum(-1).double()
            losses.extend(nll.tolist())
            if observe is not None:
                observe(i, logits)
            del logits
    return losses


def perplexity(model, windows: list[list[int]], tokens_per_batch: int = TOKENS_PER_BATCH,
               positions_per_loss: int | None = None) -> tuple[float, int]:
    """Perplexity over `windows` and the number of tokens it predicted."""
    losses = window_losses(model, windows, tokens_per_batch, positions_per_loss)
    count = len(windows) * (len(windows[0]) - 1)
    return math.exp(sum(losses) / count), count


@register
class Perplexity(Evaluator):
    name = "perplexity"
    # The ratio is the job's own: every job measures its original.
    baseline_always = True
    required = True

    def measure(self, loaded: Loaded, inputs: Inputs, load: dict[str, Any]) -> dict[str, Any]:
        per_window = len(inputs.windows[0]) - 1
        divergence = Divergence.for_role(loaded.role, inputs.scratch, len(inputs.windows) * per_window)
        if isinstance(loaded.model, LlamaCppModel):
            losses = loaded.model.window_losses(inputs.windows, observe=divergence.observe)
        else:
            # Under a memory cap, one window at a time bounds the logits' memory.
            losses = window_losses(loaded.model, inputs.windows, 1 if inputs.max_vram_bytes else TOKENS_PER_BATCH,
                                   observe=divergence.observe)
        divergence.finish()
        tokens = len(inputs.windows) * per_window
        return {"perplexity": math.exp(sum(losses) / tokens), "tokens": tokens, "window_nll": losses, "load": load,
                "kernel": loaded.kernel, "divergence": divergence.figures() if loaded.role == "quantized" else None,
                "divergence_error": divergence.error}

    def figures(self, baseline: dict[str, Any] | None, quantized: dict[str, Any]) -> Figures:
        assert baseline is not None
        interval = stats.paired_ppl_ratio_interval(baseline["window_nll"], quantized["window_nll"],
                                                   quantized["tokens"] // len(quantized["window_nll"]))
        kl = dict(quantized["divergence"] or {})
        if baseline["divergence_error"]:
            kl = {"kl_error": f"the original's log-probabilities: {baseline['divergence_error']}"}
        return Figures(
            columns=dict(ppl_baseline=baseline["perplexity"], ppl_quantized=quantized["perplexity"],
                         ppl_ratio=quantized["perplexity"] / baseline["perplexity"],
                         ppl_ratio_low=interval[0] if interval else None, ppl_ratio_high=interval[1] if interval else None,
                         kl_divergence=kl.pop("kl_divergence", None), kl_divergence_p99=kl.pop("kl_divergence_p99", None),
                         eval_peak_vram_bytes=quantized["load"]["peak_vram_bytes"]),
            metrics=dict(eval_tokens=quantized["tokens"], eval_peak_vram_baseline_bytes=baseline["load"]["peak_vram_bytes"],
                         eval_peak_vram_nvml_bytes=quantized["load"]["peak_vram_nvml_bytes"],
                         # The load each perplexity ran on: `dense` for a dequantized one.
                         ppl_kernel=quantized["kernel"], ppl_kernel_baseline=baseline["kernel"],
                         ppl_packed_instead=quantized["load"].get("packed_instead"),
                         ppl_ratio_interval="95 % paired bootstrap over windows" if interval else
                         "one window: no interval", **kl),
        )
