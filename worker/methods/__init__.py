"""The method registry: `--method NAME` → the class that implements it.

Each method lives in its own module and registers itself with `@register`.
"""

from __future__ import annotations

from api_client.errors import SpecError
from worker.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"method {cls.name} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown method {name!r} (choose from {', '.join(names())})") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


# Importing the modules registers them.
from worker.methods import awq, bnb4bit, fp8, gptq, int8, rtn  # noqa: E402,F401

__all__ = ["Method", "register", "get", "names"]
