"""Artifact stores, opened by URL: `file:///dir` (local.py) and
`s3://bucket/prefix` (s3.py). A new kind of store is one module whose class
registers its URL scheme with `@register`.

The registry is discovered, not a table: every module of this package but
`base` (what the stores share) is a kind of store, so dropping one in is the
whole change. Discovery imports the modules, so a store must keep its client
library's import lazy (s3.py imports boto3 when a store is opened), as the
client imports this package everywhere.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from api_client.errors import SpecError
from api_client.infra.storage.base import Store, StoredObject, StoreError, TransferCancelled, sha256_file

_SCHEMES: dict[str, Callable[[str], Store]] = {}


def register(scheme: str) -> Callable[[type[Store]], type[Store]]:
    """Open `scheme://…` URLs with the decorated class."""
    def add(cls: type[Store]) -> type[Store]:
        _SCHEMES[scheme] = cls
        return cls
    return add


def open_store(url: str) -> Store:
    """The store that `url` (or an object or prefix inside it) lives in.
    Settings a kind of store needs (an S3 endpoint) come from the environment."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in _SCHEMES:
        kinds = " or ".join(f"{s}://…" for s in sorted(_SCHEMES))
        raise SpecError(f"a store URL must be {kinds}, not {url!r}")
    return _SCHEMES[scheme](url)


def open_object(url: str) -> tuple[Store, str, int | None]:
    """The store holding the object `url` names (`s3://bucket/key`), the
    object's name in it, and its size: None where it does not exist or these
    credentials cannot list it. The size comes first so that a caller can
    refuse an object too large before reading a byte of it."""
    parent, _, name = url.rstrip("/").rpartition("/")
    store = open_store(parent)
    return store, name, next((o.size for o in store.list(name) if o.key == name), None)


# The modules of the package that are not stores.
NOT_STORES = frozenset({"base"})


def _discover() -> None:
    """Import every store module, which registers its scheme. It runs last in
    this module, once `register` exists for the modules to import."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in NOT_STORES:
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

__all__ = ["Store", "StoredObject", "StoreError", "TransferCancelled", "open_store", "register", "sha256_file"]
