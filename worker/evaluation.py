"""Perplexity, decode speed and memory of a checkpoint loaded from disk.

The original model and the quantized artifact are measured by the same code
on the same token windows, each freshly loaded from its directory, so the
ratio compares like with like and the artifact is proven to load.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path

from worker.gpu import Device, PeakMemory

# Tokens per forward batch in perplexity: bounds the logits' memory
# (tokens × vocabulary × 4 bytes).
_TOKENS_PER_BATCH = 4096


@dataclass
class EvalResult:
    perplexity: float
    tokens: int
    windows: int
    peak_vram_bytes: int | None
    peak_vram_nvml_bytes: int | None
    tokens_per_s: float | None
    load_seconds: float
    seconds: float


def load(path: Path, device: Device, max_vram_bytes: int | None, dense_bytes: int | None = None,
         trust_remote_code: bool = False):
    """Load a checkpoint (original or quantized) for inference on `device`.

    `dense_bytes` is the size of the original model's weights: under a memory
    cap, a checkpoint that is dequantized to them when it runs is placed by it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = _loading_options(path, device)
    kwargs["trust_remote_code"] = trust_remote_code
    if device.is_cuda:
        kwargs["dtype"] = "auto"
        kwargs["device_map"] = {"": 0}
        if max_vram_bytes:
            import psutil

            kwargs["device_map"] = "auto"
            kwargs["max_memory"] = {0: gpu_weight_budget(path, max_vram_bytes, dense_bytes),
                                    "cpu": int(psutil.virtual_memory().available)}
    else:
        # CPU kernels for fp16 are slow or missing; compute in fp32.
        kwargs["dtype"] = torch.float32
        kwargs["device_map"] = {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    return model


def gpu_weight_budget(path: Path, max_vram_bytes: int, dense_bytes: int | None) -> int:
    """How many bytes of `path`'s weights accelerate may place on the GPU
    under a cap of `max_vram_bytes`; the rest stays in CPU memory.

    Half the cap: the other half is for one window's logits (perplexity then
    runs a window at a time) and the layer being onloaded. At 0.7 a 7B model's
    evaluation under 10 GiB ran out of memory on an H100 (bench/RESULTS.md).
    transformers runs a compressed-tensors checkpoint by dequantizing it in
    place to the original dtype, so a packed layer placed on the GPU grows to
    its dense size: the share shrinks by the packed-to-dense ratio.
    """
    from api_client.checkpoint import inspect

    budget = int(max_vram_bytes * 0.5)
    if _quantization_config(path).get("quant_method") == "compressed-tensors" and dense_bytes:
        packed = inspect(path).weight_bytes
        budget = int(budget * min(1.0, packed / dense_bytes))
    return budget


def _loading_options(path: Path, device: Device) -> dict:
    """How transformers should run a quantized checkpoint here.

    GPTQModel picks Machete/Marlin kernels on Hopper by default, which it
    compiles on first use after downloading CUTLASS from GitHub; a worker may
    have no internet and a job should not compile. Its Triton kernels compute
    the same product and need neither.

    transformers runs compressed-tensors checkpoints dequantized. By default
    it does so in a hook on the first forward pass, which fails on a model
    accelerate spread over GPU and CPU (under --max-vram): the hook removes
    accelerate's hook from inside the forward call that still needs it
    (AttributeError: no attribute '_hf_hook'). Dequantizing at load, after the
    dispatch, takes the same memory and avoids that.
    """
    qc = _quantization_config(path)
    method = qc.get("quant_method")
    if method == "compressed-tensors":
        from transformers import CompressedTensorsConfig

        return {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    if not device.is_cuda:
        return {}
    if method == "gptq":
        from transformers import GPTQConfig

        return {"quantization_config": GPTQConfig(bits=qc["bits"], backend="triton")}
    if method == "awq":
        from transformers import AwqConfig

        return {"quantization_config": AwqConfig(bits=qc["bits"], backend="gemm_triton")}  # type: ignore[arg-type]  # a str it converts
    return {}


def _quantization_config(path: Path) -> dict:
    import json

    return json.loads((path / "config.json").read_text()).get("quantization_config") or {}


def perplexity(model, windows: list[list[int]], tokens_per_batch: int = _TOKENS_PER_BATCH) -> tuple[float, int]:
    import torch

    device = next(model.parameters()).device
    seqlen = len(windows[0])
    batch = max(1, tokens_per_batch // seqlen)
    nll, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(windows), batch):
            ids = torch.tensor(windows[i:i + batch], device=device)
            logits = model(ids).logits.float()
            # Token t predicts token t+1: the last logit has no target.
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
            nll += loss.item()
            count += ids[:, 1:].numel()
    return math.exp(nll / count), count


def decode_speed(model, prompt: list[int], new_tokens: int) -> float | None:
    """Tokens per second generating `new_tokens` greedily at batch 1."""
    import torch

    if new_tokens <= 0:
        return None
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    kwargs: dict = {"do_sample": False}
    if model.generation_config.pad_token_id is None:
        kwargs["pad_token_id"] = model.generation_config.eos_token_id
    with torch.inference_mode():
        # Warm up with the same call: the first generate of a process pays
        # one-time costs (kernel selection, allocator growth, lazy imports)
        # that a short warm-up was seen not to cover.
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        _sync(device)
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        _sync(device)
        elapsed = time.perf_counter() - start
    generated = out.shape[1] - ids.shape[1]
    return generated / elapsed if elapsed > 0 else None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def evaluate(path: Path, windows: list[list[int]], device: Device, max_vram_bytes: int | None,
             decode_tokens: int, dense_bytes: int | None = None, trust_remote_code: bool = False) -> EvalResult:
    start = time.perf_counter()
    with PeakMemory(device) as peak:
        model = load(path, device, max_vram_bytes, dense_bytes, trust_remote_code)
        loaded = time.perf_counter()
        # Under a memory cap, one window at a time bounds the logits' memory.
        ppl, tokens = perplexity(model, windows, 1 if max_vram_bytes else _TOKENS_PER_BATCH)
        speed = decode_speed(model, windows[0][:32], decode_tokens)
    del model
    gc.collect()
    if device.is_cuda:
        import torch

        torch.cuda.empty_cache()
    return EvalResult(
        perplexity=ppl, tokens=tokens, windows=len(windows), peak_vram_bytes=peak.torch_peak,
        peak_vram_nvml_bytes=peak.nvml_peak, tokens_per_s=speed, load_seconds=loaded - start,
        seconds=time.perf_counter() - start,
    )
