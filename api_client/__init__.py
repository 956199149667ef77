"""qfarm's client side: the job contract (spec, method catalog, errors,
database, storage, queue), the client API and the `qfarm` CLI. It imports
nothing from `worker/`, torch or any quantization library.

The names below load on first use, so `import api_client.errors` (which the
worker does everywhere) costs one small module, not the client's whole stack.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Client": "api_client.app.client", "QFarmError": "api_client.errors",
    "JobSpec": "api_client.contract.spec", "CalibSpec": "api_client.contract.spec", "EvalSpec": "api_client.contract.spec",
}

if TYPE_CHECKING:
    from api_client.app.client import Client
    from api_client.contract.spec import CalibSpec, EvalSpec, JobSpec
    from api_client.errors import QFarmError


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'api_client' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


__all__ = ["Client", "QFarmError", "JobSpec", "CalibSpec", "EvalSpec"]
