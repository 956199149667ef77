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

The registry is an explicit table (`MODULES`), not discovered: its order is
the order evaluators measure in and their figures are listed in, which a
directory listing would only give by the accident of their names, and the
package also holds helpers that are not evaluators (divergence.py).
tests/test_registries.py proves the table names every module here but those
helpers, so a new metric's module cannot be forgotten in it.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from worker import gguf_runtime, loading
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
    # lm-eval tasks (worker/evaluators/task_accuracy.py), already on local disk.
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
    # Needs a torch model (lm-eval's HFLM): a GGUF file is then measured on
    # transformers' load of it, not on llama.cpp.
    torch_model: ClassVar[bool] = False

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
    """Add an evaluator; importing a module of `MODULES` registers its own."""
    _EVALUATORS.append(cls)
    return cls


def evaluators() -> list[Evaluator]:
    return [cls() for cls in _EVALUATORS]


def run(inputs: Inputs, baseline: Path, quantized: Path) -> Figures:
    """Measure both models with every evaluator that is wanted, a load at a
    time (so one model is in memory at once), and return the job's figures."""
    return run_targets(inputs, baseline, {"": quantized})[""]


def run_targets(inputs: Inputs, baseline: Path, targets: dict[str, Path]) -> dict[str, Figures]:
    """`run` for an artifact that holds several models (a GGUF job's files,
    by format): the original is measured once, each target against it.
    Every target's `eval_seconds` is the whole evaluation's."""
    chosen = [e for e in evaluators() if e.wanted(inputs)]
    base, passes = _measure(chosen, "baseline", baseline, inputs)
    measured = {label: _measure(chosen, "quantized", path, inputs) for label, path in targets.items()}
    seconds = sum(p["seconds"] for p in passes.values()) + sum(p["seconds"] for _, ps in measured.values() for p in ps.values())
    out = {}
    for label, (quant, own) in measured.items():
        figures = Figures()
        for e in chosen:
            b, q = base.get(e.name), quant[e.name]
            failed = next((m["error"] for m in (b, q) if m and "error" in m), None)
            if failed:
                figures.metrics[f"{e.name}_error"] = failed
            else:
                figures.merge(e.figures(b, q))
        figures.metrics["eval_passes"] = {**passes, **own}
        figures.columns["eval_seconds"] = seconds
        out[label] = figures
    return out


def _measure(chosen: list[Evaluator], role: str, path: Path,
             inputs: Inputs) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every chosen evaluator's figures of one model (`role`), a load at a
    time, and each load's own figures (seconds, peak memory) by pass name."""
    measured: dict[str, dict[str, Any]] = {}
    passes: dict[str, dict[str, Any]] = {}
    for load, wanted in _passes(chosen, role, path, inputs):
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
                try:
                    for e in wanted:
                        try:
                            measured[e.name] = e.measure(loaded, inputs, figures)
                        except Exception as exc:
                            if e.required:
                                raise
                            measured[e.name] = {"error": _reason(exc, role)}
                finally:
                    _close(loaded)
                    del loaded
            except Exception as exc:
                # A GGUF file no runtime here loads is unmeasured, not broken.
                if any(e.required for e in wanted) and not isinstance(exc, gguf_runtime.NoRuntime):
                    raise
                for e in wanted:
                    measured[e.name] = {"error": _reason(exc, role)}
        figures.update(seconds=time.perf_counter() - start, evaluators=[e.name for e in wanted],
                       peak_vram_bytes=peak.torch_peak - resident if peak.torch_peak is not None and resident is not None
                       else peak.torch_peak,
                       peak_vram_nvml_bytes=peak.nvml_peak)
        release_memory(inputs.device)
    return measured, passes


def _passes(chosen: list[Evaluator], role: str, path: Path, inputs: Inputs) -> list[tuple[str, list[Evaluator]]]:
    """The loads of one model and the evaluators each serves, in order. A
    GGUF file has one load in the worker's GGUF runtime (gguf_runtime.py)
    for everything, and where that runtime is llama.cpp, a second in
    transformers' GGUF loader for what needs a torch model (lm-eval)."""
    wanted = [e for e in chosen if role == "quantized" or inputs.full_baseline or e.baseline_always]
    if role == "quantized" and gguf_runtime.is_gguf(path):
        torch_only = gguf_runtime.runtime() == gguf_runtime.LLAMA_CPP
        groups = [("gguf", [e for e in wanted if not (torch_only and e.torch_model)]),
                  ("gguf_transformers", [e for e in wanted if torch_only and e.torch_model])]
    else:
        groups = [(load, [e for e in wanted if e.load == load]) for load in LOADS]
    return [(load, es) for load, es in groups if es]


def _load(load: str, role: str, path: Path, inputs: Inputs) -> Loaded:
    if load in ("gguf", "gguf_transformers"):
        model = gguf_runtime.load(path, inputs.device, len(inputs.windows[0]), transformers_only=load == "gguf_transformers")
        if isinstance(model, gguf_runtime.LlamaCppModel):
            return Loaded(model, role, model.kernel)
        return Loaded(model, role, gguf_runtime.TRANSFORMERS,
                      dense_reason="transformers dequantizes every GGUF tensor as it loads the file")
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


def _close(loaded: Loaded) -> None:
    """A llama.cpp model frees its memory when closed, not when collected."""
    if isinstance(loaded.model, gguf_runtime.LlamaCppModel):
        loaded.model.close()


def _allocated(device: Device) -> int | None:
    if not device.is_cuda:
        return None
    import torch

    return int(torch.cuda.memory_allocated())


def _reason(exc: BaseException, role: str) -> str:
    from api_client.errors import first_line

    model = "the original model" if role == "baseline" else "the artifact"
    return f"{model}: {type(exc).__name__}: {first_line(exc)}"[:500]


# The evaluators' modules, in the order they measure and their figures are listed.
MODULES = ("decode", "perplexity", "serving", "task_accuracy")
# The modules of the package that hold no evaluator: what evaluators share.
HELPERS = frozenset({"divergence"})


def _load_modules() -> None:
    """Import every evaluator's module in `MODULES`' order, which registers
    them in it. It runs last in this module, once what they import from it
    exists (names relative to this package, so a renamed package moves along)."""
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}")


_load_modules()

__all__ = ["Evaluator", "Figures", "Inputs", "Loaded", "evaluators", "register", "run"]
