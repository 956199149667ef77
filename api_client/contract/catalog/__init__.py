"""The method catalog: what `--method NAME` means, for the client and the
worker alike — its formats, its typed options, whether it calibrates, the
hardware it needs. No quantization code lives here (that is worker/methods/,
one implementation per catalog entry), so a laptop validates a submission
without torch.

A method is a `MethodSpec` subclass (base.py) declared in methods.py and
listed in its `METHODS` table; the worker implements it under the same name.

The registry is an explicit table, not discovered: the members are classes
of one module rather than modules of a package, so a table beside their
declarations is the one place to look, and its order is the order they are
declared and reviewed in. tests/test_registries.py proves the table lists
every MethodSpec that methods.py declares.
"""

from __future__ import annotations

from api_client.contract.catalog.base import MethodSpec
from api_client.contract.catalog.methods import METHODS
from api_client.contract.catalog.options import Params
from api_client.errors import SpecError

_REGISTRY: dict[str, type[MethodSpec]] = {}


def register(cls: type[MethodSpec]) -> type[MethodSpec]:
    """Add a method to the catalog: METHODS' entries, at import (a test may
    add one of its own)."""
    if cls.name in _REGISTRY:
        raise RuntimeError(f"method {cls.name} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[MethodSpec]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown method {name!r} (choose from {', '.join(names())})") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def capabilities() -> list[tuple[int, int]]:
    """The GPU generations some method needs (FP8: 8.9)."""
    return sorted({c for c in (m.min_capability for m in _REGISTRY.values()) if c is not None})


def label_of(method: str, fmt: str | None) -> str:
    """`gptq` for GPTQ's default format, `gptq:gptq` for another (as
    `qfarm compare --methods` spells them)."""
    return method if fmt in (None, get(method).formats[0]) else f"{method}:{fmt}"


for _method in METHODS:
    register(_method)

__all__ = ["MethodSpec", "Params", "register", "get", "names", "capabilities", "label_of"]
