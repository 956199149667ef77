"""What an artifact store does. Keys are '/'-separated and relative to the
store's own prefix."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from api_client.errors import QFarmError

CHUNK = 8 * 1024 * 1024


def digest_file(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    return digest_file(path, "sha256")


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    # When it was written (UTC), where the store says.
    modified: datetime | None = None
    # What changes when the object's bytes do (S3: the ETag), where the store says.
    version: str | None = None


class Store(ABC):
    url: str

    @abstractmethod
    def uri(self, key: str) -> str:
        """The full URL of `key`, as users see and pass it back."""

    @abstractmethod
    def key_of(self, uri: str) -> str:
        """The key inside this store of a URL `uri` returned."""

    @abstractmethod
    def put_file(self, path: Path, key: str, should_stop: Callable[[], bool] | None = None) -> None:
        """Store the file at `path` under `key`. Where the transfer can stop
        midway, it polls `should_stop` and raises TransferCancelled."""

    @abstractmethod
    def verify(self, path: Path, key: str, sha256: str) -> None:
        """Raise StoreError unless the stored object has the bytes of `path`,
        whose sha256 the caller already knows."""

    @abstractmethod
    def put_bytes(self, data: bytes, key: str) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> None: ...

    @abstractmethod
    def list(self, prefix: str) -> list[StoredObject]: ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def check(self) -> None:
        """Fail with one line unless the store can be reached."""


class StoreError(QFarmError):
    """A store operation failed; the message says which object and why."""


class TransferCancelled(StoreError):
    """A transfer stopped because its `should_stop` said so."""
