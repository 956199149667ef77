"""The code behind each method of the catalog (api_client/catalog): one
module per method, each registering its `quantize` under the catalog's name.
The catalog says what a method is; this says how the worker runs it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from api_client import catalog
from api_client.catalog.options import Params

if TYPE_CHECKING:
    from worker.context import JobContext

Quantize = Callable[["JobContext", Any, str], None]
_IMPLEMENTATIONS: dict[str, Quantize] = {}


def implements(spec: type[catalog.MethodSpec]) -> Callable[[Quantize], Quantize]:
    """Register `fn(ctx, params, fmt)` as the code that runs `spec`."""
    def add(fn: Quantize) -> Quantize:
        if spec.name in _IMPLEMENTATIONS:
            raise RuntimeError(f"method {spec.name} implemented twice")
        _IMPLEMENTATIONS[spec.name] = fn
        return fn
    return add


def quantize(name: str, ctx: JobContext, params: Params, fmt: str) -> None:
    """Quantize ctx.model_dir into ctx.output_dir with method `name`."""
    catalog.get(name)  # one clear error for a name the catalog does not know
    _IMPLEMENTATIONS[name](ctx, params, fmt)


def implemented() -> list[str]:
    return sorted(_IMPLEMENTATIONS)


# Importing the modules registers them.
from worker.methods import awq, bnb4bit, fp8, gguf, gptq, int8, rtn  # noqa: E402,F401

__all__ = ["implements", "quantize", "implemented"]
