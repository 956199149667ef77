"""Artifact stores: `file:///dir` (local.py) and `s3://bucket/prefix` (s3.py)."""

from __future__ import annotations

from api_client.errors import SpecError
from api_client.storage.base import Store, StoredObject, StoreError, TransferCancelled, sha256_file


def open_store(url: str, s3_endpoint_url: str | None = None) -> Store:
    if url.startswith("s3://"):
        from api_client.storage.s3 import S3Store

        return S3Store(url, s3_endpoint_url)
    if url.startswith("file://"):
        from api_client.storage.local import LocalStore

        return LocalStore(url)
    raise SpecError(f"QFARM_STORAGE_URL must be s3://bucket/prefix or file:///dir, not {url!r}")


__all__ = ["Store", "StoredObject", "StoreError", "TransferCancelled", "open_store", "sha256_file"]
