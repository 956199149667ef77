"""The memory and speed to serve: the model loaded as it would be served
(worker/loading.load_for_serving: packed where a kernel runs it packed, the
fastest kernel that validates, in the checkpoint's dtype), then a few
evaluation windows at batch 1, a greedy decode at batch 1 and a batched
request, timed as a server runs them (worker/serve_speed.py).

- `weights_bytes`: the weights as the loaded model holds them;
- `serve_vram_bytes` (GPU): torch's peak allocation over the load, the
  windows and the batch-1 decode, i.e. weights + activations + the KV cache
  of one window, without the CUDA context (NVML's figure, which has it, is in
  the metrics); the batched request's peak is `serve_batch_vram_bytes`;
- `serve_kernel`: the path the layers ran (`dense` where none is packed,
  with the reason), so a dense figure is never reported as a packed one;
- `serve_method`: how generation was timed (`hf-static-cudagraph`, or
  `hf-static-eager` with the reason);
- `serve_tokens_per_s`: decode at batch 1 (mean over repeats, spread in the
  metrics); `serve_batch_tokens_per_s`: new tokens per second of a batch of
  requests (BATCH_GPU: 16 of 128 prompt and 128 new tokens), prefill
  included; `serve_prefill_tokens_per_s`: that batch's prefill.

A GGUF file is served by llama.cpp where the worker has it (its CPU build:
weights as llama.cpp holds them, no GPU memory, timed at batch 1 only),
else by transformers' dequantized load of it (`transformers-gguf`, dense).
"""

from __future__ import annotations

from typing import Any

from worker import loading, serve_speed
from worker.evaluators import Evaluator, Figures, Inputs, Loaded, register
from worker.evaluators.decode import decode_timing
from worker.evaluators.perplexity import perplexity
from worker.gguf_runtime import LlamaCppModel

# Windows run at batch 1: the peak is reached in the first; a few more show it is steady.
SERVE_WINDOWS = 3
# The batched request (batch, prompt tokens, new tokens): a server's load on a
# GPU; on a CPU a small one, whose figure only shows the path runs.
BATCH_GPU = (16, 128, 128)
BATCH_CPU = (2, 8, 4)


def batch_shape(inputs: Inputs) -> tuple[int, int, int]:
    batch, prompt, new = BATCH_GPU if inputs.device.is_cuda else BATCH_CPU
    return batch, min(prompt, len(inputs.windows[0])), new


@register
class Serving(Evaluator):
    name = "serving"
    load = "serve"

    def measure(self, loaded: Loaded, inputs: Inputs, load: dict[str, Any]) -> dict[str, Any]:
        model = loaded.model
        if isinstance(model, LlamaCppModel):
            return self._measure_llama_cpp(loaded, inputs, load)
        weights = loading.held_bytes(model)
        resident = _allocated() - load["resident_before"] if inputs.device.is_cuda else None
        # The windows' perplexity on this load: the packed path computes what
        # the reference load does (a broken kernel or an fp16 overflow shows).
        ppl, _ = perplexity(model, inputs.windows[:SERVE_WINDOWS], tokens_per_batch=1, positions_per_loss=256)
        decode = decode_timing(model, inputs)
        # The peak so far: one window and a batch-1 decode, what a single
        # user's request takes; the batched request's is its own figure.
        peak_batch1 = _peak(inputs, load)
        batched = _batched(loaded, inputs)
        return {"weights_bytes": weights, "loaded_vram_bytes": resident, "kernel": loaded.kernel,
                "dense_reason": loaded.dense_reason, "window_tokens": len(inputs.windows[0]), "load": load,
                "perplexity": ppl, "offloaded": loaded.offloaded, "vram_bytes": peak_batch1,
                "batch_vram_bytes": _peak(inputs, load), "decode": decode.summary() if decode else {},
                "batched": batched, "kernel_trials": loaded.kernel_trials}

    @staticmethod
    def _measure_llama_cpp(loaded: Loaded, inputs: Inputs, load: dict[str, Any]) -> dict[str, Any]:
        """A GGUF file on llama.cpp's CPU build: no GPU memory to count (a
        torch peak of a GPU worker would read as a model served in none)."""
        model = loaded.model
        ppl, _ = model.perplexity(inputs.windows[:SERVE_WINDOWS])
        decode = decode_timing(model, inputs)
        return {"weights_bytes": model.weights_bytes(), "loaded_vram_bytes": None, "vram_bytes": None,
                "batch_vram_bytes": None, "kernel": loaded.kernel, "dense_reason": None,
                "window_tokens": len(inputs.windows[0]), "load": load, "perplexity": ppl, "offloaded": False,
                "decode": decode.summary() if decode else {},
                "batched": {"shape": "x".join(map(str, batch_shape(inputs)[:2])) + f"+{batch_shape(inputs)[2]}",
                            "error": "not measured: llama.cpp's CPU build is timed at batch 1 only"},
                "kernel_trials": []}

    def figures(self, baseline: dict[str, Any] | None, quantized: dict[str, Any]) -> Figures:
        base = baseline or {}
        q_decode, q_batch = quantized["decode"], quantized["batched"]
        b_decode, b_batch = base.get("decode") or {}, base.get("batched") or {}
        columns = dict(
            weights_bytes=quantized["weights_bytes"], serve_vram_bytes=quantized["vram_bytes"],
            serve_kernel=quantized["kernel"], serve_method=q_decode.get("method") or q_batch.get("method"),
            serve_tokens_per_s=q_decode.get("decode_tokens_per_s"),
            serve_batch_tokens_per_s=q_batch.get("tokens_per_s"), serve_prefill_tokens_per_s=q_batch.get("prefill_tokens_per_s"),
            weights_bytes_baseline=base.get("weights_bytes"),
            serve_vram_baseline_bytes=base.get("vram_bytes"),
            serve_tokens_per_s_baseline=b_decode.get("decode_tokens_per_s"),
            serve_batch_tokens_per_s_baseline=b_batch.get("tokens_per_s"),
            serve_prefill_tokens_per_s_baseline=b_batch.get("prefill_tokens_per_s"),
        )
        metrics = dict(
            serve_dense_reason=quantized["dense_reason"], serve_window_tokens=quantized["window_tokens"],
            serve_loaded_vram_bytes=quantized["loaded_vram_bytes"],
            # GPU memory held after the load beyond the weights counted: not
            # weights by qfarm's count, but part of what serving takes.
            serve_unattributed_bytes=(quantized["loaded_vram_bytes"] - quantized["weights_bytes"]
                                      if quantized["loaded_vram_bytes"] is not None else None),
            serve_vram_nvml_bytes=quantized["load"]["peak_vram_nvml_bytes"],
            serve_batch_vram_bytes=quantized["batch_vram_bytes"],
            serve_load_seconds=quantized["load"]["load_seconds"],
            serve_perplexity=quantized["perplexity"], serve_windows=SERVE_WINDOWS,
            # Weights partly in CPU memory (under --max-vram): the VRAM figure
            # is not that of a model that fits.
            serve_offloaded=quantized["offloaded"],
            serve_decode=q_decode or None, serve_batch=q_batch,
            # The packed kernels tried, in order, and why each was or was not taken.
            serve_kernel_trials=quantized["kernel_trials"],
        )
        if base:
            metrics.update(serve_kernel_baseline=base["kernel"], serve_loaded_vram_baseline_bytes=base["loaded_vram_bytes"],
                           serve_perplexity_baseline=base["perplexity"], serve_offloaded_baseline=base["offloaded"],
                           serve_decode_baseline=b_decode or None, serve_batch_baseline=b_batch or None,
                           serve_method_baseline=b_decode.get("method") or b_batch.get("method"))
        return Figures(columns, metrics)


def _batched(loaded: Loaded, inputs: Inputs) -> dict[str, Any]:
    """The batched request's figures, or why there are none: a model partly
    in CPU memory would stream its offloaded weights in for every step (a
    13B original under a 16 GiB cap decoded 0.4 tokens/s at batch 1), and a
    batch that does not fit the GPU (under --max-vram) is recorded, not
    fatal to the pass's other figures."""
    from worker.gpu import is_oom, release_memory

    batch, prompt, new = batch_shape(inputs)
    shape = f"{batch}x{prompt}+{new}"
    if loaded.offloaded:
        return {"shape": shape, "error": "not measured: weights offloaded to CPU memory would stream in for every step"}
    failed = None
    try:
        return serve_speed.measure(loaded.model, inputs.windows[0][:prompt], new, batch=batch).summary()
    except Exception as exc:
        if not is_oom(exc):
            raise
        failed = f"out of GPU memory: {str(exc).splitlines()[0][:160]}"
    release_memory(inputs.device)
    return {"shape": shape, "error": failed}


def _allocated() -> int:
    import torch

    return int(torch.cuda.memory_allocated())


def _peak(inputs: Inputs, load: dict[str, Any]) -> int | None:
    """torch's peak since the pass began, less what the process held before it."""
    if not inputs.device.is_cuda:
        return None
    import torch

    return int(torch.cuda.max_memory_allocated()) - load["resident_before"]
