"""Import the heavy libraries once, in a worker's parent process.

Each job runs in a fresh child process (`worker_max_tasks_per_child = 1`),
forked from the worker's parent. Importing torch, transformers and
llm-compressor costs 5-7 s; done in the parent, every child inherits them and
a job starts on its own work at once instead of paying the imports again.

The parent must never initialise CUDA: a child forked after that cannot use
the GPU. torch's availability check then goes through NVML
(PYTORCH_NVML_BASED_CUDA_CHECK), and bitsandbytes and GPTQModel, which query
the device when imported, are left to the job.
"""

from __future__ import annotations

import importlib
import logging
import os
import time

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


def enabled() -> bool:
    return os.environ.get("QFARM_PRELOAD", "1").lower() not in ("0", "false", "no", "off")


def preload(modules: tuple[str, ...] = MODULES) -> float:
    """Import `modules`; return the seconds it took. Raises PreloadError if an
    import initialised CUDA (the forked job processes could not use it)."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    start = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            # A worker without one of the libraries still serves the methods
            # it has; the job that needs it reports the import error.
            log.warning("preload: cannot import %s (%s)", name, exc)
    import torch

    if torch.cuda.is_initialized():
        raise PreloadError("importing the quantization libraries initialised CUDA in the worker's parent process, "
                           "so its job processes could not use the GPU; start the worker with QFARM_PRELOAD=0")
    return time.perf_counter() - start
