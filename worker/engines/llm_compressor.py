"""llm-compressor: GPTQ, AWQ, RTN and FP8 into compressed-tensors checkpoints.

With the weights on the CPU, llm-compressor's sequential pipeline onloads one
decoder layer at a time to the GPU for calibration, so a model larger than the
GPU still quantizes.
"""

from __future__ import annotations

import time
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


def quantize(ctx, modifiers: list, calibrated: bool) -> None:
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

    # Timed like the other engines, whose library calls load the weights
    # themselves (bitsandbytes quantizes as it loads, GPTQModel.load): loading,
    # quantizing, and writing the artifact. The load is also kept apart.
    with _no_pinning_without_accelerator(), ctx.library_call():
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(ctx.model_dir, dtype="auto", device_map="cuda:0" if on_gpu else None,
                                                     trust_remote_code=ctx.trust_remote_code)
        ctx.facts["weights_load_seconds"] = time.perf_counter() - start
        oneshot(model=model, recipe=modifiers, **kwargs)
        # Compression into the packed format happens while saving.
        model.save_pretrained(ctx.output_dir, save_compressed=True)
    tokenizer.save_pretrained(ctx.output_dir)
