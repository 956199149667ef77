"""What a job measures on the original model and on its artifact, one
module an evaluator: perplexity, decode speed, task accuracy (lm-eval) and
the memory to serve. Each registers itself here, says which load of a model
it measures (`reference`: the load perplexity has always used, dequantized
for compressed-tensors; `serve`: weights packed where a kernel can run them,
worker/loading.py), and turns its two measurements into the job's figures:
headline numbers for the job's columns, the rest for its metrics. A new
metric is a new module.

Both models are measured by the same code on the same inputs, each freshly
loaded from its directory, so a ratio compares like with like and the
artifact is proven to load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from worker import loading
from worker.gpu import Device, PeakMemory, release_memory

LOADS = ("reference", "serve")


@dataclass
class Inputs:
    """What every evaluator may read: the same for both models."""

    device: Device
    tokenizer: Any
    windows: list[list[int]]
    max_vram_bytes: int | None
    decode_tokens: int
    scratch: Path
    dense_bytes: int | None = None
    trust_remote_code: bool = False
    # lm-eval tasks (worker/evaluators/tasks.py), already on local disk.
    tasks: Any = None
    # Measure the original model's figures beyond perplexity (False in all
    # but one member of a compare group: its baseline is measured once).
    full_baseline: bool = True


@dataclass
class Loaded:
    """One load of one model, as evaluators see it."""

    model: Any
    role: str  # baseline or quantized
    kernel: str
    dense_reason: str | None = None
    offloaded: bool = False
    # Why a reference load is the packed one (loading.packed_reference_reason).
    packed_instead: str | None = None
    # The packed kernels the serve load tried (loading.ServeLoad.kernel_trials).
    kernel_trials: list[dict[str, Any]] | None = None


@dataclass
class Figures:
    columns: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def merge(self, other: Figures) -> None:
        self.columns.update(other.columns)
        self.metrics.update(other.metrics)


class Evaluator:
    name: ClassVar[str]
    load: ClassVar[str] = "reference"
    # A required evaluator's failure fails the job; another's is recorded as
    # `<name>_error` in the metrics (its figures absent) and the job goes on:
    # the artifact is no worse for a figure that could not be measured.
    required: ClassVar[bool] = False
    # Whether the original model is measured when `full_baseline` is off.
    baseline_always: ClassVar[bool] = False

    def wanted(self, inputs: Inputs) -> bool:
        return True

    def measure(self, loaded: Loaded, inputs: Inputs, load: dict[str, Any]) -> dict[str, Any]:
        """Figures of one model on `loaded`. `load` holds the load's own
        figures (seconds, and peak memory once the pass has ended): an
        evaluator may keep a reference to read them in `figures`."""
        raise NotImplementedError

    def figures(self, baseline: dict[str, Any] | None, quantized: dict[str, Any]) -> Figures:
        raise NotImplementedError


_EVALUATORS: list[type[Evaluator]] = []


def register(cls: type[Evaluator]) -> type[Evaluator]:
    _EVALUATORS.append(cls)
    return cls


def evaluators() -> list[Evaluator]:
    return [cls() for cls in _EVALUATORS]


def run(inputs: Inputs, baseline: Path, quantized: Path) -> Figures:
    """Measure both models with every evaluator that is wanted, a load at a
    time (so one model is in memory at once), and return the job's figures."""
    chosen = [e for e in evaluators() if e.wanted(inputs)]
    measured: dict[str, dict[str, dict[str, Any]]] = {"baseline": {}, "quantized": {}}
    passes: dict[str, dict[str, Any]] = {}
    for role, path in (("baseline", baseline), ("quantized", quantized)):
        for load in LOADS:
            wanted = [e for e in chosen if e.load == load
                      and (role == "quantized" or inputs.full_baseline or e.baseline_always)]
            if not wanted:
                continue
            figures: dict[str, Any] = {}
            passes[f"{role}_{load}"] = figures
            start = time.perf_counter()
            # What the process already held (nothing, unless a library kept
            # something alive): a pass's peak counts only what it added.
            resident = _allocated(inputs.device)
            figures["resident_before"] = resident or 0
            with PeakMemory(inputs.device) as peak:
                try:
                    loaded = _load(load, role, path, inputs)
                    figures["load_seconds"] = time.perf_counter() - start
                    figures["kernel"] = loaded.kernel
                    if loaded.packed_instead:
                        figures["packed_instead"] = loaded.packed_instead
                    for e in wanted:
                        try:
                            measured[role][e.name] = e.measure(loaded, inputs, figures)
                        except Exception as exc:
                            if e.required:
                                raise
                            measured[role][e.name] = {"error": _reason(exc, role)}
                    del loaded
                except Exception as exc:
                    if any(e.required for e in wanted):
                        raise
                    for e in wanted:
                        measured[role][e.name] = {"error": _reason(exc, role)}
            figures.update(seconds=time.perf_counter() - start, evaluators=[e.name for e in wanted],
                           peak_vram_bytes=peak.torch_peak - resident if peak.torch_peak is not None and resident is not None
                           else peak.torch_peak,
                           peak_vram_nvml_bytes=peak.nvml_peak)
            release_memory(inputs.device)
    out = Figures()
    for e in chosen:
        base, quant = measured["baseline"].get(e.name), measured["quantized"][e.name]
        failed = next((m["error"] for m in (base, quant) if m and "error" in m), None)
        if failed:
            out.metrics[f"{e.name}_error"] = failed
        else:
            out.merge(e.figures(base, quant))
    out.metrics["eval_passes"] = passes
    out.columns["eval_seconds"] = sum(p["seconds"] for p in passes.values())
    return out


def _load(load: str, role: str, path: Path, inputs: Inputs) -> Loaded:
    packed_instead = None
    if load == "reference" and role == "quantized":
        packed_instead = loading.packed_reference_reason(path, inputs.device, inputs.max_vram_bytes, inputs.dense_bytes)
    if load == "serve" or packed_instead:
        served = loading.load_for_serving(path, inputs.device, inputs.max_vram_bytes, inputs.scratch / role,
                                          inputs.trust_remote_code, inputs.dense_bytes if role == "quantized" else None)
        return Loaded(served.model, role, served.kernel, served.dense_reason, served.offloaded, packed_instead,
                      served.kernel_trials)
    model = loading.load(path, inputs.device, inputs.max_vram_bytes,
                         inputs.dense_bytes if role == "quantized" else None, inputs.trust_remote_code)
    return Loaded(model, role, "dense" if role == "baseline" else loading.kernel_of(model))


def _allocated(device: Device) -> int | None:
    if not device.is_cuda:
        return None
    import torch

    return int(torch.cuda.memory_allocated())


def _reason(exc: BaseException, role: str) -> str:
    from api_client.errors import first_line

    model = "the original model" if role == "baseline" else "the artifact"
    return f"{model}: {type(exc).__name__}: {first_line(exc)}"[:500]


# Importing the modules registers them, in the order their figures are listed.
from worker.evaluators import decode, perplexity, serving, tasks  # noqa: E402,F401

__all__ = ["Evaluator", "Figures", "Inputs", "Loaded", "evaluators", "register", "run"]
