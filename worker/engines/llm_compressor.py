"""llm-compressor: GPTQ, AWQ, RTN and FP8 into compressed-tensors checkpoints.

With the weights on the CPU, llm-compressor's sequential pipeline onloads one
decoder layer at a time to the GPU for calibration, so a model larger than the
GPU still quantizes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from api_client.states import Stage

IGNORE = ["lm_head"]


def int_weight_scheme(bits: int, group_size: int, symmetric: bool) -> dict[str, Any]:
    """Integer weight-only quantization (WxA16) as compressed-tensors describes it."""
    return {
        "weights": {
            "num_bits": bits,
            "type": "int",
            "symmetric": symmetric,
            "strategy": "group" if group_size > 0 else "channel",
            "group_size": group_size if group_size > 0 else None,
            "dynamic": False,
        }
    }


def modifier(class_name: str, scheme: str | dict, **kwargs: Any):
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    cls: Any = {"GPTQModifier": GPTQModifier, "AWQModifier": AWQModifier, "QuantizationModifier": QuantizationModifier}[class_name]
    if isinstance(scheme, str):
        return cls(targets=["Linear"], scheme=scheme, ignore=IGNORE, **kwargs)
    return cls(config_groups={"group_0": {"targets": ["Linear"], **scheme}}, ignore=IGNORE, **kwargs)


@contextmanager
def _no_pinning_without_accelerator():
    """llm-compressor's AWQ pins cached activations for faster host-to-GPU
    copies; pinning needs an accelerator, so without one it is skipped."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.cuda.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    setattr(IntermediatesCache, "pin_memory", lambda self, *args, **kwargs: None)  # noqa: B010 - patched for the call
    try:
        yield
    finally:
        setattr(IntermediatesCache, "pin_memory", original)  # noqa: B010


@contextmanager
def _layer_progress(ctx) -> Iterator[None]:
    """A job event as each decoder layer is calibrated and quantized, so
    `qfarm watch` shows "layer 3 of 32" during a long quantizing stage.
    llm-compressor's sequential pipeline calls LifecycleCallbacks.
    sequential_epoch_end once per traced subgraph: the embeddings, then one
    per decoder layer; no public hook reports it, so the call is wrapped."""
    from llmcompressor.core import LifecycleCallbacks

    layers = ctx.model_config.get("num_hidden_layers")
    original = LifecycleCallbacks.sequential_epoch_end
    done = [0]

    def epoch_end(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        done[0] += 1
        if isinstance(layers, int) and 1 < done[0] <= layers + 1:
            ctx.note(f"layer {done[0] - 1} of {layers} calibrated and quantized")
        return result

    setattr(LifecycleCallbacks, "sequential_epoch_end", epoch_end)  # noqa: B010 - wrapped for this call only
    try:
        yield
    finally:
        setattr(LifecycleCallbacks, "sequential_epoch_end", original)  # noqa: B010


def quantize(ctx, modifiers: list, calibrated: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_gpu = ctx.weights_on_gpu()
    ctx.facts["weights_on"] = "gpu" if on_gpu else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(ctx.model_dir, trust_remote_code=ctx.trust_remote_code)

    kwargs: dict[str, Any] = {}
    if calibrated:
        from datasets import Dataset

        ctx.stage(Stage.CALIBRATING)
        windows = ctx.calibration_windows(tokenizer)
        kwargs = dict(
            dataset=Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]}),
            num_calibration_samples=len(windows),
            max_seq_length=len(windows[0]),
            shuffle_calibration_samples=False,
        )
    ctx.stage(Stage.QUANTIZING, "weights on the GPU" if on_gpu else
              ("weights in CPU memory, onloaded to the GPU a layer at a time" if ctx.device.is_cuda else "on the CPU"))
    from llmcompressor import oneshot

    from worker.logs import quiet_loguru

    quiet_loguru()

    # Timed like the other engines, whose library calls load the weights
    # themselves (bitsandbytes quantizes as it loads, GPTQModel.load): loading,
    # quantizing, and writing the artifact. The load is also kept apart.
    # On a CPU, fp16 matrix products have no fast kernels: one 4096×384 by
    # 384×1024 product took 2.9 s in fp16 and 47 ms in fp32 on a 2-core
    # worker. Calibration runs in fp32 there, and the model goes back to its
    # own dtype before saving, so scales and unquantized weights are stored
    # as a GPU worker stores them.
    dtype = "auto" if ctx.device.is_cuda else torch.float32
    from llmcompressor.core import create_session

    # A session of the job's own: llm-compressor's global session keeps the
    # quantized model (its packed weights) alive after oneshot returns, and
    # on a GPU that memory was counted in the evaluation's serve figures
    # (3.6 GiB more for a W4 7B, bench/RESULTS.md §4).
    with create_session(), _no_pinning_without_accelerator(), _layer_progress(ctx), ctx.library_call():
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(ctx.model_dir, dtype=dtype, device_map="cuda:0" if on_gpu else None,
                                                     trust_remote_code=ctx.trust_remote_code)
        ctx.facts["weights_load_seconds"] = time.perf_counter() - start
        ctx.facts["calibration_dtype"] = str(model.dtype).removeprefix("torch.")
        oneshot(model=model, recipe=modifiers, **kwargs)
        if not ctx.device.is_cuda:
            model.to(ctx.model_dtype())
        # Compression into the packed format happens while saving.
        model.save_pretrained(ctx.output_dir, save_compressed=True)
        _release(model)
        del model
    tokenizer.save_pretrained(ctx.output_dir)


def _release(model) -> None:
    """Drop every tensor of a model that is done with. The sequential
    pipeline's torch.fx tracing leaves generated code whose globals keep the
    traced modules alive after oneshot returns (found with gc on a CPU), so
    `del model` alone frees nothing; emptying each module's parameters and
    buffers frees the memory whatever still holds the modules."""
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name in list(store.keys()):
                del store[name]

