"""A directory as the artifact store (`file:///path`): one machine, or a
shared filesystem every worker mounts at the same path."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

from api_client.errors import ServiceUnavailable
from api_client.infra.storage import register
from api_client.infra.storage.base import Store, StoredObject, StoreError, sha256_file


def _stored(key: str, path: Path) -> StoredObject:
    st = path.stat()
    return StoredObject(key, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc), f"{st.st_mtime_ns}-{st.st_size}")


@register("file")
class LocalStore(Store):
    def __init__(self, url: str):
        parsed = urlparse(url)
        self.root = Path(unquote(parsed.path)).expanduser()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents and path != self.root.resolve():
            raise StoreError(f"key {key!r} leaves the store")
        return path

    def uri(self, key: str) -> str:
        return (self.root / key).as_uri()

    def key_of(self, uri: str) -> str:
        path = Path(unquote(urlparse(uri).path))
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            raise StoreError(f"{uri} is not inside the store {self.url}") from None

    def put_file(self, path: Path, key: str, should_stop: Callable[[], bool] | None = None) -> None:
        # A local copy runs at disk speed (the kernel copies it); it is not
        # worth stopping midway.
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(path, tmp)
        # A reader never sees a half-copied file under its final name.
        os.replace(tmp, dest)

    def verify(self, path: Path, key: str, sha256: str) -> None:
        dest = self._path(key)
        if not dest.is_file() or dest.stat().st_size != path.stat().st_size or sha256_file(dest) != sha256:
            raise StoreError(f"stored copy of {key} does not match what was written")

    def put_bytes(self, data: bytes, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self.uri(key)} does not exist") from None

    def get_file(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise StoreError(f"{self.uri(key)} does not exist")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)

    def list(self, prefix: str) -> list[StoredObject]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        if base.is_file():
            return [_stored(prefix, base)]
        return sorted((_stored(p.relative_to(self.root).as_posix(), p) for p in base.rglob("*") if p.is_file()),
                      key=lambda o: o.key)

    def delete_prefix(self, prefix: str) -> None:
        target = self._path(prefix)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists():
            target.unlink()

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceUnavailable(f"cannot use the artifact directory {self.root}: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise ServiceUnavailable(f"cannot write to the artifact directory {self.root}")
