"""The memory and speed to serve: the model loaded as it would be served
(worker/loading.load_for_serving: packed where a kernel runs it packed, in
the checkpoint's dtype), then a few evaluation windows at batch 1 and a
greedy decode at batch 1.

- `weights_bytes`: the weights as the loaded model holds them;
- `serve_vram_bytes` (GPU): torch's peak allocation over the load, the
  windows and the decode, i.e. weights + activations + the KV cache of one
  window, without the CUDA context (NVML's figure, which has it, is in the
  metrics);
- `serve_kernel`: the path the layers ran (`dense` where none is packed,
  with the reason), so a dense figure is never reported as a packed one;
- `serve_tokens_per_s`: decode speed at batch 1 on that path.

A GGUF file is served by llama.cpp where the worker has it (its CPU build:
weights as llama.cpp holds them, no GPU memory), else by transformers'
dequantized load of it (`transformers-gguf`, dense).
"""

from __future__ import annotations

from typing import Any

from worker import loading
from worker.evaluators import Evaluator, Figures, Inputs, Loaded, register
from worker.evaluators.decode import decode_speed
from worker.evaluators.perplexity import perplexity
from worker.gguf_runtime import LlamaCppModel

# Windows run at batch 1: the peak is reached in the first; a few more show it is steady.
SERVE_WINDOWS = 3


@register
class Serving(Evaluator):
    name = "serving"
    load = "serve"

    def measure(self, loaded: Loaded, inputs: Inputs, load: dict[str, Any]) -> dict[str, Any]:
        import torch

        model = loaded.model
        if isinstance(model, LlamaCppModel):
            return self._measure_llama_cpp(loaded, inputs, load)
        weights = loading.held_bytes(model)
        resident = torch.cuda.memory_allocated() - load["resident_before"] if inputs.device.is_cuda else None
        # The windows' perplexity on this load: the packed path computes what
        # the reference load does (a broken kernel or an fp16 overflow shows).
        ppl, _ = perplexity(model, inputs.windows[:SERVE_WINDOWS], tokens_per_batch=1, positions_per_loss=256)
        speed = decode_speed(model, inputs.windows[0][:32], inputs.decode_tokens)
        return {"weights_bytes": weights, "loaded_vram_bytes": resident, "tokens_per_s": speed, "kernel": loaded.kernel,
                "dense_reason": loaded.dense_reason, "window_tokens": len(inputs.windows[0]), "load": load,
                "perplexity": ppl, "offloaded": loaded.offloaded}

    @staticmethod
    def _measure_llama_cpp(loaded: Loaded, inputs: Inputs, load: dict[str, Any]) -> dict[str, Any]:
        """A GGUF file on llama.cpp's CPU build: no GPU memory to count (a
        torch peak of a GPU worker would read as a model served in none)."""
        model = loaded.model
        ppl, _ = model.perplexity(inputs.windows[:SERVE_WINDOWS])
        return {"weights_bytes": model.weights_bytes(), "loaded_vram_bytes": None, "on_gpu": False,
                "tokens_per_s": model.decode_speed(inputs.windows[0][:32], inputs.decode_tokens), "kernel": loaded.kernel,
                "dense_reason": None, "window_tokens": len(inputs.windows[0]), "load": load, "perplexity": ppl,
                "offloaded": False}

    def figures(self, baseline: dict[str, Any] | None, quantized: dict[str, Any]) -> Figures:
        base = baseline or {}
        columns = dict(
            weights_bytes=quantized["weights_bytes"],
            serve_vram_bytes=quantized["load"]["peak_vram_bytes"] if quantized.get("on_gpu", True) else None,
            serve_kernel=quantized["kernel"], serve_tokens_per_s=quantized["tokens_per_s"],
            weights_bytes_baseline=base.get("weights_bytes"),
            serve_vram_baseline_bytes=base["load"]["peak_vram_bytes"] if base else None,
            serve_tokens_per_s_baseline=base.get("tokens_per_s"),
        )
        metrics = dict(
            serve_dense_reason=quantized["dense_reason"], serve_window_tokens=quantized["window_tokens"],
            serve_loaded_vram_bytes=quantized["loaded_vram_bytes"],
            # GPU memory held after the load beyond the weights counted: not
            # weights by qfarm's count, but part of what serving takes.
            serve_unattributed_bytes=(quantized["loaded_vram_bytes"] - quantized["weights_bytes"]
                                      if quantized["loaded_vram_bytes"] is not None else None),
            serve_vram_nvml_bytes=quantized["load"]["peak_vram_nvml_bytes"],
            serve_load_seconds=quantized["load"]["load_seconds"],
            serve_perplexity=quantized["perplexity"], serve_windows=SERVE_WINDOWS,
            # Weights partly in CPU memory (under --max-vram): the VRAM figure
            # is not that of a model that fits.
            serve_offloaded=quantized["offloaded"],
        )
        if base:
            metrics.update(serve_kernel_baseline=base["kernel"], serve_loaded_vram_baseline_bytes=base["loaded_vram_bytes"],
                           serve_perplexity_baseline=base["perplexity"], serve_offloaded_baseline=base["offloaded"])
        return Figures(columns, metrics)
