"""Import the heavy libraries once, in a worker's parent process.

Each job runs in a fresh child process (`worker_max_tasks_per_child = 1`),
forked from the worker's parent. Importing torch, transformers and
llm-compressor costs 5-7 s; done in the parent, every child inherits them and
a job starts on its own work at once instead of paying the imports again.

The parent must never initialise CUDA: a child forked after that cannot use
the GPU. torch's availability check goes through NVML
(PYTORCH_NVML_BASED_CUDA_CHECK), and on a GPU worker each module is first
imported in a throwaway child: one whose import initialises CUDA (some query
the device when imported) is left to the jobs. A last child then proves that a
process forked from the parent still gets the GPU.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("qfarm.worker")

MODULES = (
    "torch",
    # bitsandbytes imports these; they are a second of its import time.
    "torch._dynamo",
    "torch._inductor.compile_fx",
    "transformers",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "accelerate",
    "datasets",
    "compressed_tensors",
    "llmcompressor",
    "llmcompressor.entrypoints.oneshot",
    "llmcompressor.modifiers.quantization",
    "llmcompressor.modifiers.awq",
)


class PreloadError(RuntimeError):
    pass


@dataclass
class Preloaded:
    seconds: float
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # would have initialised CUDA
    missing: list[str] = field(default_factory=list)  # not installed


def enabled() -> bool:
    return os.environ.get("QFARM_PRELOAD", "1").lower() not in ("0", "false", "no", "off")


def preload(modules: tuple[str, ...] = MODULES, probe: bool | None = None) -> Preloaded:
    """Import `modules` here. With `probe` (default: on a GPU worker), each
    is tried in a forked child first and skipped if it initialises CUDA.
    Raises PreloadError if, after all, a forked child cannot use the GPU."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    gpu = _gpu_visible()
    probe = gpu if probe is None else probe
    start = time.perf_counter()
    done = Preloaded(0.0)
    for name in modules:
        if probe and not _in_child(lambda: _leaves_cuda_alone(name)):  # noqa: B023 - runs in this iteration
            done.skipped.append(name)
            continue
        try:
            importlib.import_module(name)
            done.loaded.append(name)
        except ImportError as exc:
            # A worker without one of the libraries still serves the methods
            # it has; the job that needs it reports the import error.
            log.warning("preload: cannot import %s (%s)", name, exc)
            done.missing.append(name)
    import torch

    if torch.cuda.is_initialized() or (gpu and not _in_child(_uses_gpu)):
        raise PreloadError("after importing the quantization libraries, the worker's job processes could not use the GPU")
    done.seconds = time.perf_counter() - start
    return done


def _gpu_visible() -> bool:
    from worker.gpu import nvml_gpus

    return os.environ.get("CUDA_VISIBLE_DEVICES") != "" and bool(nvml_gpus())


def _leaves_cuda_alone(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return True
    import torch

    return not torch.cuda.is_initialized()


def _uses_gpu() -> bool:
    import torch

    return torch.ones(1, device="cuda").sum().item() == 1.0


def _in_child(check: Callable[[], bool]) -> bool:
    """Run `check` in a forked child, which leaves this process untouched."""
    pid = os.fork()
    if pid == 0:
        try:
            code = 0 if check() else 1
        except BaseException:  # noqa: BLE001 - any failure means "no"
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
