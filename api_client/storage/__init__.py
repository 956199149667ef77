"""Artifact stores, opened by URL: `file:///dir` (local.py) and
`s3://bucket/prefix` (s3.py). A new kind of store is one module whose class
registers its URL scheme with `@register`."""

from __future__ import annotations

from collections.abc import Callable

from api_client.errors import SpecError
from api_client.storage.base import Store, StoredObject, StoreError, TransferCancelled, sha256_file

_SCHEMES: dict[str, Callable[[str], Store]] = {}


def register(scheme: str) -> Callable[[type[Store]], type[Store]]:
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


# Importing the modules registers them.
from api_client.storage import local, s3  # noqa: E402,F401

__all__ = ["Store", "StoredObject", "StoreError", "TransferCancelled", "open_store", "register", "sha256_file"]
