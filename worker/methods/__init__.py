"""The code behind each method of the catalog (api_client/contract/catalog): one
module per method, each registering its `quantize` under the catalog's name.
The catalog says what a method is; this says how the worker runs it.

The registry is discovered, not a table: every module of this package is an
implementation, so a new method's code is one module here (and its entry in
the catalog's table, which the client must know without this package).
Discovery imports every module, so each imports its engine (torch,
llm-compressor, GPTQModel…) inside `quantize`, not at the top: importing
this package stays cheap, and a worker lacking one engine still serves the
other methods.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from api_client.contract import catalog
from api_client.contract.catalog.options import Params

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


def _discover() -> None:
    """Import every implementation, which registers it. It runs last in this
    module, once `implements` exists for the modules to import."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_discover()

__all__ = ["implements", "quantize", "implemented"]
