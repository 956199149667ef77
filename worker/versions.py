"""What shaped an artifact besides its spec, for its manifest and `qfarm
status`: the versions of the libraries, the device (GPU, driver, CUDA), and
the random seed the job ran under."""

from __future__ import annotations

import platform
import random
from importlib import metadata
from typing import Any

PACKAGES = ("qfarm", "torch", "transformers", "accelerate", "llmcompressor", "compressed-tensors",
            "gptqmodel", "bitsandbytes", "optimum", "safetensors", "numpy", "lm_eval",
            # GGUF: the writer of the k-quants, llama.cpp's library, the runtime that measured them.
            "auto-round", "gguf", "llama-cpp-python")

# Every job seeds Python's, numpy's and torch's generators with this before it
# quantizes (`seed` in its metrics): the engines draw nothing qfarm does not
# hand them, but a library that does (a shuffle, a random init) then draws
# the same numbers in every run.
SEED = 0


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import torch

        out["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return out


def environment(device: Any) -> dict[str, Any]:
    """The device the job ran on: GPU name and compute capability, the
    driver (NVML) and the CUDA runtime torch was built with; and the seed."""
    out: dict[str, Any] = {"seed": SEED, "device": device.name}
    if device.is_cuda:
        import torch

        out["gpu_capability"] = ".".join(map(str, device.capability)) if device.capability else None
        out["cuda_runtime"] = torch.version.cuda
        out["driver"] = _driver_version()
    return out


def seed_everything() -> None:
    import numpy as np
    import torch

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)  # every device's generator, CUDA's included


def _driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML: the figure is unknown, not an error
        return None
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001
        return None
    finally:
        pynvml.nvmlShutdown()
