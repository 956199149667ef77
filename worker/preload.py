"""Import the heavy libraries once, in a worker's parent process.

Each job runs in a fresh process (worker/job_process.py), forked from a
pool process that Celery forked from the worker's parent. Importing torch,
transformers and the quantization libraries costs 5-10 s; done in the
parent, every job inherits them and starts on its own work at once.

The parent must never initialise CUDA: a child forked after that cannot use
the GPU. torch's availability check goes through NVML
(PYTORCH_NVML_BASED_CUDA_CHECK), and on a GPU worker a throwaway child
imports the modules first, one after the other, saying after each whether
CUDA is still untouched; the parent imports each module once the child has
cleared it, so the two run side by side and the probe costs little more than
the imports. A module whose import initialises CUDA (some query the device
when imported) is left to the jobs, and so is every module that imports it:
the next probe child refuses to import it, so they fail fast. The last
probe child, once it holds every module the parent imports, proves that a
process forked from it gets the GPU, beside the parent's last imports.
"""

from __future__ import annotations

import gc
import importlib
import importlib.abc
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from api_client.config import Settings

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
    frozen: int = 0  # objects moved out of the collector's reach (freeze_imported)


def enabled() -> bool:
    return Settings.from_env().preload


def preload(modules: tuple[str, ...] = MODULES, probe: bool | None = None) -> Preloaded:
    """Import `modules` here. With `probe` (default: on a GPU worker), each
    is cleared by a forked child first and skipped if it initialises CUDA.
    Raises PreloadError if, after all, a forked child cannot use the GPU."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    gpu = _gpu_visible()
    probe = gpu if probe is None else probe
    start = time.perf_counter()
    done = Preloaded(0.0)
    todo = list(modules)
    gpu_ok: bool | None = None
    while todo:
        verdict = None
        for name, verdict in _probe(list(todo), done.skipped, gpu) if probe else [(name, OK) for name in todo]:
            if verdict in (GPU_OK, GPU_FAILED):
                gpu_ok = verdict == GPU_OK
                continue
            todo.remove(name)
            if verdict in (OK, MISSING):
                _import(name, done)  # a missing one says why in the log
            else:
                done.skipped.append(name)
        if verdict != CUDA:
            # Done, or the child died without a word on the rest: left to the jobs.
            done.skipped.extend(todo)
            break
    import torch

    if gpu and gpu_ok is None:  # no probe child got as far as the check
        gpu_ok = _in_child(_uses_gpu)
    if torch.cuda.is_initialized() or (gpu and not gpu_ok):
        raise PreloadError("after importing the quantization libraries, the worker's job processes could not use the GPU")
    done.frozen = freeze_imported()
    done.seconds = time.perf_counter() - start
    return done


OK, MISSING, CUDA, REFUSED = "ok", "missing", "cuda", "refused"
GPU_OK, GPU_FAILED = "gpu-ok", "gpu-failed"


def freeze_imported() -> int:
    """Move every object alive now (the imported libraries' ~600,000) into
    the collector's permanent generation, which forked processes inherit:
    each full collection a job asks for (gpu.release_memory, four or more a
    job; AutoRound 18 in one GGUF export) then walks the job's own objects
    only, 1 ms instead of 0.45-0.7 s of CPU (tiny model, measured
    2026-11-29), and no longer writes to (copies) the pages the job shares
    with its parent. Call it once the imports are done; returns how many
    objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _import(name: str, done: Preloaded) -> None:
    try:
        importlib.import_module(name)
        done.loaded.append(name)
    except ImportError as exc:
        # A worker without one of the libraries still serves the methods
        # it has; the job that needs it reports the import error.
        log.warning("preload: cannot import %s (%s)", name, exc)
        done.missing.append(name)


def _probe(names: list[str], refused: list[str], check_gpu: bool = False) -> Iterator[tuple[str, str]]:
    """Import `names` in order in a forked child and yield each one's verdict
    as it comes. The child stops after the first that initialises CUDA (it
    can tell nothing more); a module needing one of `refused` gets CUDA
    without being imported (REFUSED). With `check_gpu`, a child that got
    through them all then proves that a process forked from it, with every
    module the parent is importing meanwhile, gets the GPU (GPU_OK): the
    check runs beside the parent's last imports instead of after them."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            sys.meta_path.insert(0, _Refuse(refused))
            with os.fdopen(write_fd, "w", buffering=1) as out:
                for name in names:
                    verdict = _verdict(name)
                    out.write(f"{name} {verdict}\n")
                    if verdict == CUDA:
                        break
                else:
                    if check_gpu:
                        out.write(f"- {GPU_OK if _in_child(_uses_gpu) else GPU_FAILED}\n")
        except BaseException:  # noqa: BLE001 - the parent skips what was not cleared
            code = 2
        os._exit(code)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as lines:
            for line in lines:
                name, verdict = line.split()
                yield name, verdict
    finally:
        os.waitpid(pid, 0)


def _verdict(name: str) -> str:
    try:
        importlib.import_module(name)
    except _Refused:
        return REFUSED
    except ImportError as exc:
        return REFUSED if isinstance(exc.__context__, _Refused) or "initialises CUDA" in str(exc) else MISSING
    import torch

    return CUDA if torch.cuda.is_initialized() else OK


class _Refused(ImportError):
    pass


class _Refuse(importlib.abc.MetaPathFinder):
    """Refuse to import the modules (and their submodules) found to
    initialise CUDA, so that what imports them fails at once."""

    def __init__(self, names: list[str]):
        self.names = tuple(names)

    def find_spec(self, fullname, path=None, target=None):
        if any(fullname == n or fullname.startswith(n + ".") for n in self.names):
            raise _Refused(f"{fullname} initialises CUDA when imported")
        return None


def _gpu_visible() -> bool:
    from worker.gpu import nvml_gpus

    return os.environ.get("CUDA_VISIBLE_DEVICES") != "" and bool(nvml_gpus())


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
