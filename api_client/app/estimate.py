"""How long a job will take, said before it is queued.

A job's time is: starting it (fetch, inspect, imports) + the library's
quantization + evaluating the original and the artifact. Each part is a cost
model whose constants were fitted to this project's own measurements:

- H100: bench/RESULTS.md (2026-11-27): every method on the 13.8M-parameter
  reference model (calibration 128 × 256 tokens, 80,325 evaluation tokens)
  and GPTQ / AWQ / NF4 on the 7B shape (6.7B parameters, 32 layers,
  evaluation 4 × 2048 tokens);
- a 2-core CPU worker: the `quickstart` suite of bench/bench.py on the
  reference model with the CPU defaults (bench/RESULTS.md, section 3).

Quantization: `fixed + per_layer × layers + per_pt × params(M) × calibration
tokens(k) + per_gb × weights(GB)`, per method and device class. Calibrated
methods pay for activations through every layer (per_pt); AWQ's grid search
pays a fixed price per layer; bitsandbytes and RTN read and round weights.
Evaluation: two loads (weights ÷ read speed) and forwards over the
evaluation tokens for both models (params × tokens ÷ throughput).

Other GPUs are estimated with the H100's figures and say so. bench/RESULTS.md
reports the estimate beside the measured time of every bench job.
"""

from __future__ import annotations

from dataclasses import dataclass

from api_client.contract.spec import CPU_DEFAULTS, GPU_DEFAULTS, Defaults


@dataclass(frozen=True)
class Cost:
    fixed: float
    per_layer: float = 0.0
    per_pt: float = 0.0  # seconds per (million params × thousand calibration tokens)
    per_gb: float = 0.0  # seconds per GB of weights


@dataclass(frozen=True)
class DeviceClass:
    name: str
    defaults: Defaults
    start_s: float  # fetch, inspect, import what the parent did not preload
    read_gb_per_s: float  # loading weights for evaluation
    forward_pt_per_s: float  # evaluation: million params × thousand tokens per second, per model
    eval_fixed_s: float  # per model evaluated: building it, the first forward
    decode_s_per_token: float  # the decode-speed measurement, per model
    costs: dict[str, Cost]
    # Under --max-vram below the model: weights kept in CPU memory cost this
    # much per GB while quantizing, and per GB per forward pass (each window
    # and each decoded token) while evaluating.
    offload_quantize_s_per_gb: float = 0.0
    offload_forward_s_per_gb: float = 0.0


# Keyed by method, or "method/format" where a format runs another engine.
H100 = DeviceClass(
    "H100", GPU_DEFAULTS, start_s=3.0, read_gb_per_s=2.5, forward_pt_per_s=60_000.0, eval_fixed_s=2.5,
    decode_s_per_token=0.02,
    costs={
        "gptq": Cost(4.5, per_layer=0.2, per_pt=2.1e-4),
        "awq": Cost(3.0, per_layer=3.9, per_pt=1.0e-4),
        "rtn": Cost(2.5, per_gb=0.75),
        "fp8": Cost(1.0, per_gb=0.75),
        "nf4": Cost(0.5, per_gb=0.6),
        "fp4": Cost(0.5, per_gb=0.6),
        "int8": Cost(0.5, per_gb=0.6),
        "gptq/gptq": Cost(40.0, per_layer=1.0, per_pt=6.3e-4),
        "awq/awq": Cost(30.0, per_layer=10.0, per_pt=3.0e-4),
        # GGUF, per format of a job: k-quants by AutoRound's torch search on
        # the GPU (a guess until bench/RESULTS.md has a GPU run: 1/200 of
        # the 2-core CPU's), Q8_0/F16 by llama.cpp's converter (numpy).
        "gguf/k": Cost(20.0, per_gb=60.0),
        "gguf/q8_0": Cost(5.0, per_gb=30.0),
        "gguf/f16": Cost(5.0, per_gb=10.0),
    },
    offload_quantize_s_per_gb=1.5, offload_forward_s_per_gb=0.55,
)
CPU = DeviceClass(
    "CPU", CPU_DEFAULTS, start_s=1.0, read_gb_per_s=0.5, forward_pt_per_s=45.0, eval_fixed_s=2.0,
    decode_s_per_token=0.02,
    costs={
        "gptq": Cost(2.0, per_layer=0.3, per_pt=0.055),
        "awq": Cost(2.0, per_layer=20.0, per_pt=0.1),
        "rtn": Cost(1.5, per_gb=20.0),
        "fp8": Cost(1.5, per_gb=20.0),
        "nf4": Cost(1.0, per_gb=20.0),
        "fp4": Cost(1.0, per_gb=20.0),
        "int8": Cost(1.0, per_gb=20.0),
        "gptq/gptq": Cost(20.0, per_layer=2.0, per_pt=0.15),
        "awq/awq": Cost(20.0, per_layer=10.0, per_pt=0.7),
        # The reference model (27.6 MB): Q4_K_M with an importance matrix
        # 5.5 min, Q8_0 1.8 s, on the 2-core machine while it was shared
        # (worker/methods/gguf.py).
        "gguf/k": Cost(20.0, per_gb=11_000.0),
        "gguf/q8_0": Cost(2.0, per_gb=65.0),
        "gguf/f16": Cost(2.0, per_gb=35.0),
    },
)
# Tokens a builtin evaluation text holds, about: 80,325 with the reference
# model's tokenizer (bench/RESULTS.md); a job with windows to spare uses all.
BUILTIN_EVAL_TOKENS = 80_000
CHARS_PER_TOKEN = 4.2


@dataclass(frozen=True)
class Estimate:
    device: str
    seconds: float
    measured: bool  # False: figures of another device class stand in

    def as_dict(self) -> dict[str, object]:
        """As a job row keeps it (`jobs.estimates`)."""
        return {"device": self.device, "seconds": round(self.seconds, 1), "measured": self.measured}


def device_class(gpu_name: str | None) -> tuple[DeviceClass, str, bool]:
    """The cost figures for a worker's device: (class, name to show, measured)."""
    if gpu_name in (None, "", "cpu"):
        return CPU, "CPU", True
    short = gpu_name.replace("NVIDIA ", "").split()[0]
    return H100, short, short in ("H100", "H200")


def _costs(dev: DeviceClass, method: str, fmt: str) -> list[Cost]:
    """The quantization costs of a job: one, or a GGUF job's one per format."""
    if method == "gguf":
        from api_client.contract.catalog.methods import K_QUANTS

        return [dev.costs["gguf/k" if f in K_QUANTS else f"gguf/{f}"] for f in fmt.split(",")]
    return [dev.costs.get(f"{method}/{fmt}") or dev.costs[method]]


def estimate(method: str, fmt: str, params_m: float, layers: int, weight_gb: float,
             calib_samples: int | None, calib_seqlen: int | None, eval_seqlen: int | None,
             eval_windows: int | None, eval_text_tokens: int, context: int | None,
             gpu_name: str | None, max_vram_gb: float | None = None, decode_tokens: int = 64) -> Estimate:
    """Seconds a job takes on a worker of `gpu_name` (None: a CPU worker)."""
    dev, name, measured = device_class(gpu_name)
    d = dev.defaults
    calib_k = (calib_samples or d.calib_samples) * (calib_seqlen or d.calib_seqlen) / 1000
    quantize = 0.0
    for cost in _costs(dev, method, fmt):
        quantize += cost.fixed + cost.per_layer * layers + cost.per_gb * weight_gb + cost.per_pt * params_m * calib_k
    seqlen = eval_seqlen or min(d.eval_seqlen, context or d.eval_seqlen)
    windows = eval_windows or d.eval_windows
    eval_tokens = min(eval_text_tokens, windows * seqlen) if windows else eval_text_tokens
    evaluate = 2 * (dev.eval_fixed_s + decode_tokens * dev.decode_s_per_token + weight_gb / dev.read_gb_per_s
                    + params_m * eval_tokens / 1000 / dev.forward_pt_per_s)
    if max_vram_gb and dev is not CPU:
        # Evaluation places half the cap's worth of weights on the GPU (worker/evaluation.py).
        offloaded = max(0.0, weight_gb - max_vram_gb / 2)
        if weight_gb * 1.25 + 2 > max_vram_gb:
            quantize += dev.offload_quantize_s_per_gb * weight_gb
        passes = (eval_tokens // seqlen if seqlen else 1) + decode_tokens
        evaluate += 2 * passes * offloaded * dev.offload_forward_s_per_gb
    return Estimate(name, dev.start_s + quantize + evaluate, measured)
