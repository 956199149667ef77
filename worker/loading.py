"""How a checkpoint (the original or a quantized artifact) is loaded to be
measured: the reference load, which perplexity and tasks use, and the serve
load, which keeps the weights packed where a kernel can run them so.

The reference load of a compressed-tensors artifact is dequantized (dense):
transformers has no packed module for it. The serve load converts such an
artifact to the GPTQ layout first (worker/packing.py) or, for FP8, asks
transformers for its optimized FP8 path; where neither applies it is dense
and says so. Every figure measured on a load names it (`kernel`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api_client.errors import QFarmError
from worker import packing
from worker.gpu import Device, is_oom, release_memory

# The share of a --max-vram cap that a measured load may fill with weights
# (gpu_weight_budget says why half); the rest stays in CPU memory.
WEIGHT_SHARE = 0.5


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
    with model_layout(path):
        loaded: Any = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    model, info = loaded
    incomplete = sorted({str(k) for k in info.get("missing_keys") or ()}
                        | {str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ()})
    if incomplete:
        # transformers initialises them at random and carries on: every
        # figure measured on such a load would be of a model that is not the
        # checkpoint (GPTQModel's Phi-3 artifacts lacked gate_up_proj).
        raise QFarmError(f"{path.name} does not load in transformers: {len(incomplete)} weights missing or of the wrong "
                         f"shape ({', '.join(incomplete[:3])}{', …' if len(incomplete) > 3 else ''})")
    if not device.is_cuda:
        to_float32(model)
    model.eval()
    return model


def model_layout(path: Path):
    """How the checkpoint's model is built (worker/layout.py): a quantized
    mixture of experts stores one layer per expert (llm-compressor quantized
    them linearized), so it is built with linearized experts, which hold its
    packed layers packed and read gpt-oss's per-expert layers right (into its
    fused experts they loaded as the random initialisation: logits 0.16 from
    the original's where the linearized load's were 0.05, as the other MoE's);
    a quantized Falcon is built with nn.Linear. An original checkpoint loads
    as transformers builds it."""
    from worker import layout as layouts

    config = json.loads((path / "config.json").read_text())
    return layouts.built(config.get("model_type") if layouts.needed(config) else None)


def to_float32(model) -> None:
    """Cast what a CPU load left in 16 bits to float32, quantized layers
    excepted (their kernels take their own dtypes).

    Asked for float32, transformers loads a compressed-tensors checkpoint's
    layers that are not quantized and not nn.Linear in the checkpoint's
    dtype: Mixtral's router (`MixtralTopKRouter`, a bare parameter) stayed
    bf16 and its first matrix product on the float32 activations failed
    ("expected m1 and m2 to have the same dtype, but got: float !=
    c10::BFloat16"), failing every Mixtral job on a CPU worker; so did
    GPT-NeoX's unquantized `lm_head`.

    compressed-tensors keeps such a model's tensors in its offload cache,
    which copies an assignment into the existing (bf16) tensor: the new
    tensors are assigned with its onloading disabled, as its docs say to
    assign a tensor directly (on a CPU the cache holds them where they run)."""
    import torch
    from compressed_tensors.offload import disable_onloading

    with disable_onloading():
        for module in model.modules():
            if _is_quantized_module(module):
                continue
            for store in (module._parameters, module._buffers):
                for name, tensor in list(store.items()):
                    if tensor is not None and tensor.dtype in (torch.float16, torch.bfloat16):
                        cast = tensor.to(torch.float32)
                        store[name] = torch.nn.Parameter(cast, requires_grad=False) \
                            if isinstance(tensor, torch.nn.Parameter) else cast


def _is_quantized_module(module) -> bool:
    """A layer holding packed or quantized weights: GPTQModel's and AWQ's
    (qweight), bitsandbytes' (Linear4bit, Linear8bitLt)."""
    return hasattr(module, "qweight") or type(module).__name__ in ("Linear4bit", "Linear8bitLt")


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
    from api_client.contract.checkpoint import inspect

    budget = int(max_vram_bytes * WEIGHT_SHARE)
    if _quantization_config(path).get("quant_method") == "compressed-tensors" and dense_bytes:
        packed = inspect(path).weight_bytes
        budget = int(budget * min(1.0, packed / dense_bytes))
    return budget


def packed_reference_reason(path: Path, device: Device, max_vram_bytes: int | None, dense_bytes: int | None) -> str | None:
    """Why the artifact's reference load (perplexity, decode, tasks) is its
    packed serve load instead of the dequantized one, or None where it is not.

    Under a cap whose GPU half cannot hold the dequantized weights, the
    dequantized load must offload them, and compressed-tensors, dequantizing
    an offloaded model, brought them onto the GPU: a 13B GPTQ artifact's
    reference load under a 16 GiB cap held 14.9 GiB of an H200 within 19 s and
    ran out of memory, although only 2.2 GiB of packed weights were placed
    there. The packed load computes the same weights (the conversion is
    lossless, tests/test_packing.py) and fits: its figures name its kernel.
    """
    if not (device.is_cuda and max_vram_bytes and dense_bytes):
        return None
    if _quantization_config(path).get("quant_method") != "compressed-tensors" or dense_bytes <= max_vram_bytes * WEIGHT_SHARE:
        return None
    return (f"dequantized, its weights ({dense_bytes / 2**30:.1f} GiB) exceed the GPU half of the "
            f"{max_vram_bytes / 2**30:.1f} GiB cap: measured on the packed load")


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
    return json.loads((path / "config.json").read_text()).get("quantization_config") or {}


@dataclass
class ServeLoad:
    model: object
    # How the weights run: e.g. gptq-tritonv2, gptq-torchaten, bnb-nf4,
    # fp8-compressed-tensors, awq-gemmtriton, dense.
    kernel: str
    # Why this checkpoint runs dense when it is quantized (None otherwise).
    dense_reason: str | None = None
    # Some weights live in CPU memory (under a cap): serving figures of a
    # model that does not fit the GPU.
    offloaded: bool = False
    # The packed kernels tried for a GPTQ-layout checkpoint, in order, each
    # {"backend", "result"}: which one validated and why the others did not.
    kernel_trials: list[dict] | None = None


def load_for_serving(path: Path, device: Device, max_vram_bytes: int | None, scratch: Path,
                     trust_remote_code: bool = False, dense_bytes: int | None = None) -> ServeLoad:
    """Load `path` as it would be served: packed where a kernel exists, in
    the checkpoint's own dtype (fp16/bf16), never upcast to fp32. Under a
    memory cap, weights that do not fit half of it are offloaded to the CPU
    and the load says so (`offloaded`): its figures are then not those of a
    model that fits."""
    from transformers import AutoModelForCausalLM

    qc = _quantization_config(path)
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    kwargs: dict = {"dtype": "auto", "trust_remote_code": trust_remote_code,
                    "device_map": {"": 0} if device.is_cuda else {"": "cpu"}}
    if device.is_cuda and max_vram_bytes:
        import psutil

        # As the reference load: half the cap for weights, the rest for one
        # window's activations, KV cache and logits and the layer being
        # onloaded. A W4 13B model's packed weights (6.76 GiB) fit in 8 GiB;
        # it served in 8.67 GiB under a 16 GiB cap (bench/RESULTS.md §4).
        kwargs["device_map"] = "auto"
        kwargs["max_memory"] = {0: int(max_vram_bytes * WEIGHT_SHARE), "cpu": int(psutil.virtual_memory().available)}
    if qc.get("quant_method") == "gptq":
        model, tried = load_gptq(path, device, kwargs)
        return _served(model, trials=tried)
    if qc.get("quant_method") != "compressed-tensors":
        with model_layout(path):
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs, **_loading_options(path, device))
        return _served(model)
    # A packed load that fails must not fail the job: its figures are then
    # the dense load's, named `dense` with the reason.
    reason = None
    trials: list[dict] | None = None
    try:
        if _is_fp8(qc):
            if not (device.is_cuda and device.capability and device.capability >= (8, 9)):
                raise packing.NotConvertible("FP8 runs packed only on GPUs of compute capability 8.9 or newer")
            from transformers import CompressedTensorsConfig

            with model_layout(path):
                model = AutoModelForCausalLM.from_pretrained(
                    path, quantization_config=CompressedTensorsConfig(use_optimized_inference=True), **kwargs)
        else:
            converted = scratch / "serve-gptq"
            # The config is written last: a finished conversion (the reference
            # pass's, when that is packed) is taken as it is.
            if not (converted / "config.json").exists():
                packing.to_gptq(path, converted, rename=_module_names(model_type))
            with model_layout(converted):
                model, trials = load_gptq(converted, device, kwargs)
        served = _served(model, trials=trials if not _is_fp8(qc) else None)
        if served.kernel != "dense":
            return served
        reason = "the packed load ran dense"
        del model, served
    except packing.NotConvertible as exc:
        reason = f"no packed kernel for this checkpoint: {exc}"
    except Exception as exc:  # noqa: BLE001 - recorded as the reason for the dense figure
        reason = f"the packed load failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
    release_memory(device)
    from transformers import CompressedTensorsConfig

    if "max_memory" in kwargs:
        # Dequantized, the weights grow to their dense size: placed by it.
        kwargs["max_memory"][0] = gpu_weight_budget(path, max_vram_bytes or 0, dense_bytes)
    with model_layout(path):
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=CompressedTensorsConfig(dequantize=True),
                                                     **kwargs)
    return _served(model, "dense", reason)


def _module_names(model_type: str | None):
    """How the serve load names a checkpoint's modules (None: as it does)."""
    from worker import layout as layouts

    if not layouts.supported(model_type):
        return None
    assert model_type is not None
    return lambda module: layouts.internal_name(model_type, module)


def gptq_backends(device: Device, qc: dict, may_offload: bool = False) -> list[str]:
    """GPTQModel's kernels for a GPTQ-layout checkpoint on `device`, fastest
    first (bench/kernels.py times them all, bench/RESULTS.md §8): Marlin
    (compute capability 8.0+, symmetric weights only; GPTQModel builds it on
    first use), then Triton, then the torch kernel. Machete (Hopper)
    downloads CUTLASS when first used, which fails on a worker without
    internet, and ExLlamaV2 compiles its C++ sources: neither is tried.
    Marlin repacks the weights when the model is loaded; a layer accelerate
    offloads to CPU memory (under --max-vram) would come back in the
    checkpoint's layout, so Marlin is not tried where layers may be
    offloaded. On a CPU, GPTQModel's own choice (its torch/ATen kernel)."""
    if not device.is_cuda:
        return ["auto"]
    out = []
    if device.capability and device.capability >= (8, 0) and qc.get("sym", True) and not may_offload:
        out.append("gptq_marlin")
    return [*out, "gptq_triton", "gptq_torch"]


def load_gptq(path: Path, device: Device, kwargs: dict) -> tuple[object, list[dict]]:
    """Load a GPTQ-layout checkpoint with the first of `gptq_backends` that
    loads and computes what the checkpoint holds (packing.check_kernel, on
    one layer against its dense dequantized weights). Returns the model and
    the trials; raises NotConvertible naming every trial when none does."""
    from transformers import AutoModelForCausalLM, GPTQConfig

    qc = _quantization_config(path)
    trials: list[dict] = []
    for backend in gptq_backends(device, qc, may_offload="max_memory" in kwargs):
        start = time.perf_counter()
        options = {} if backend == "auto" else {"quantization_config": GPTQConfig(bits=int(qc["bits"]), backend=backend)}
        trial: dict = {"backend": backend}
        trials.append(trial)
        model: Any = None
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs, **options)
            trial["kernel"] = kernel_of(model)
            trial["result"] = packing.check_kernel(model, path)
            trial["seconds"] = time.perf_counter() - start
            return model, trials
        except packing.WrongOutput as exc:
            trial["result"] = f"wrong output: {exc}"
        except Exception as exc:
            if is_oom(exc):
                raise
            trial["result"] = f"failed to load: {type(exc).__name__}: {_first_line(exc)}"
        trial["seconds"] = time.perf_counter() - start
        model = None  # a model that loaded but computes wrong
        # Outside the except block: the failed load's tensors (held by its
        # traceback) are gone before the next load is measured.
        release_memory(device)
    raise packing.NotConvertible("no GPTQ kernel computes this checkpoint here: "
                                 + "; ".join(f"{t['backend']} {t['result']}" for t in trials))


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else ""


def _served(model, kernel: str | None = None, reason: str | None = None, trials: list[dict] | None = None) -> ServeLoad:
    model.eval()
    offloaded = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()} & {"cpu", "disk"})
    return ServeLoad(model, kernel or kernel_of(model), reason, offloaded=bool(offloaded) and model.device.type == "cuda",
                     kernel_trials=trials)


def _is_fp8(qc: dict) -> bool:
    return any((g.get("weights") or {}).get("type") == "float" and (g.get("weights") or {}).get("num_bits") == 8
               for g in (qc.get("config_groups") or {}).values())


def kernel_of(model) -> str:
    """The path the model's linear layers run, read from the loaded modules
    (not from the config): a layer that was dequantized shows as dense."""
    import torch

    for module in model.modules():
        name = type(module).__name__
        if name in ("Linear4bit", "Linear8bitLt"):
            weight = module.weight
            kind = getattr(weight, "quant_type", None) or "int8"
            return f"bnb-{kind}"
        qtype = getattr(module, "QUANT_TYPE", None)
        if hasattr(module, "qweight"):
            method = "awq" if "awq" in (qtype or name).lower() else "gptq"
            kernel = name.lower().removesuffix("quantlinear").removesuffix("linear")
            kernel = (kernel.removesuffix(method) if kernel != method else kernel) or "torch"
            return f"{method}-{kernel}"
    if any(p.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) for p in model.parameters()):
        return "fp8-compressed-tensors"
    return "dense"


def held_bytes(model) -> int:
    """Bytes of the weights as the loaded model holds them: every parameter
    and buffer once (tied weights count once), with bitsandbytes' scales,
    which live beside its packed parameters rather than as buffers."""
    seen: dict[tuple, int] = {}

    def add(t) -> None:
        if t is None or not hasattr(t, "untyped_storage"):
            return
        if t.is_meta:  # offloaded by accelerate: its bytes live elsewhere, counted by size
            seen[("meta", id(t))] = t.numel() * t.element_size()
            return
        storage = t.untyped_storage()
        key = (t.device.type, storage.data_ptr())
        seen[key] = max(seen.get(key, 0), storage.nbytes())

    for p in model.parameters():
        add(p)
        state = getattr(p, "quant_state", None)
        if state is not None:
            for value in _state_tensors(state):
                add(value)
        scb = getattr(p, "SCB", None)
        add(scb)
    for b in model.buffers():
        add(b)
    return sum(seen.values())


def _state_tensors(state) -> list:
    """The tensors of a bitsandbytes QuantState (absmax, the code, and the
    nested state of double quantization)."""
    import torch

    out = [v for v in vars(state).values() if isinstance(v, torch.Tensor)]
    nested = getattr(state, "state2", None)
    if nested is not None:
        out += _state_tensors(nested)
    return out
