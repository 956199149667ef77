"""Versions of the libraries that shaped an artifact, for its manifest."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("qfarm", "torch", "transformers", "accelerate", "llmcompressor", "compressed-tensors",
            "gptqmodel", "bitsandbytes", "optimum", "safetensors", "numpy",
            # GGUF: the writer of the k-quants, llama.cpp's library, the runtime that measured them.
            "auto-round", "gguf", "llama-cpp-python")


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
