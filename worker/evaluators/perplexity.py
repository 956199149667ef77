"""Perplexity on the evaluation windows, on the reference load: the ratio
quantized / original is qfarm's first accuracy figure. The load it ran on is
named (`ppl_kernel`): under a cap too small for the dequantized artifact the
reference load is the packed one (loading.packed_reference_reason); a GGUF
file's is llama.cpp's (`llama.cpp-cpu`) where the worker has it."""

from __future__ import annotations

import math
from typing import Any

from worker.evaluators import Evaluator, Figures, Inputs, Loaded, register
from worker.gguf_runtime import LlamaCppModel

# Tokens per forward batch: bounds the logits' memory (tokens × vocabulary × 4 bytes).
TOKENS_PER_BATCH = 4096


def perplexity(model, windows: list[list[int]], tokens_per_batch: int = TOKENS_PER_BATCH,
               positions_per_loss: int | None = None) -> tuple[float, int]:
    """Perplexity over `windows`, `tokens_per_batch` tokens a forward pass.
    `positions_per_loss` takes the loss that many positions at a time, so no
    fp32 copy of a whole batch's logits is made (the serving pass: its peak
    is then the forward pass's; 0.25 GiB less for a 2048-token window of a
    32k vocabulary)."""
    import torch

    device = next(model.parameters()).device
    seqlen = len(windows[0])
    batch = max(1, tokens_per_batch // seqlen)
    step = positions_per_loss or seqlen - 1
    nll, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(windows), batch):
            ids = torch.tensor(windows[i:i + batch], device=device)
            logits = model(ids).logits
            # Token t predicts token t+1: the last logit has no target.
            for start in range(0, seqlen - 1, step):
                end = min(start + step, seqlen - 1)
                part = logits[:, start:end].float()
                loss = torch.nn.functional.cross_entropy(
                    part.reshape(-1, part.shape[-1]), ids[:, start + 1:end + 1].reshape(-1), reduction="sum")
                nll += loss.item()
                count += ids[:, start + 1:end + 1].numel()
            del logits
    return math.exp(nll / count), count


@register
class Perplexity(Evaluator):
    name = "perplexity"
    # The ratio is the job's own: every job measures its original.
    baseline_always = True
    required = True

    def measure(self, loaded: Loaded, inputs: Inputs, load: dict[str, Any]) -> dict[str, Any]:
        if isinstance(loaded.model, LlamaCppModel):
            ppl, tokens = loaded.model.perplexity(inputs.windows)
        else:
            # Under a memory cap, one window at a time bounds the logits' memory.
            ppl, tokens = perplexity(loaded.model, inputs.windows, 1 if inputs.max_vram_bytes else TOKENS_PER_BATCH)
        return {"perplexity": ppl, "tokens": tokens, "load": load, "kernel": loaded.kernel}

    def figures(self, baseline: dict[str, Any] | None, quantized: dict[str, Any]) -> Figures:
        assert baseline is not None
        return Figures(
            columns=dict(ppl_baseline=baseline["perplexity"], ppl_quantized=quantized["perplexity"],
                         ppl_ratio=quantized["perplexity"] / baseline["perplexity"],
                         eval_peak_vram_bytes=quantized["load"]["peak_vram_bytes"]),
            metrics=dict(eval_tokens=quantized["tokens"], eval_peak_vram_baseline_bytes=baseline["load"]["peak_vram_bytes"],
                         eval_peak_vram_nvml_bytes=quantized["load"]["peak_vram_nvml_bytes"],
                         # The load each perplexity ran on: `dense` for a dequantized one.
                         ppl_kernel=quantized["kernel"], ppl_kernel_baseline=baseline["kernel"],
                         ppl_packed_instead=quantized["load"].get("packed_instead")),
        )
