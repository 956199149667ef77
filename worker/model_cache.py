"""Models fetched once per host: a worker keeps what it downloads from
`s3://` prefixes and the Hugging Face hub on local disk, so comparing five
methods of a 15 GB model fetches it once, not five times.

- Keyed by source and version: an `s3://` prefix by the names, sizes and ETags
  of its files (a re-uploaded file is a new entry); a hub id by the revision
  huggingface_hub resolves, in its own cache layout under `hub/`.
- Verified: every S3 object is checked against its ETag as it lands (the
  store's `verify`), the hub's files by huggingface_hub; an entry counts only
  once complete (`.complete` is written last).
- Safe for several workers of a host: one fetches an entry under an
  exclusive lock while the others wait for it; a job holds a shared lock on
  its entry while it runs, so eviction never removes a model in use and
  any number of jobs use one entry at once.
- Bounded by QFARM_MODEL_CACHE_BYTES (default 100 GiB; 0 turns the cache
  off), least recently used entries evicted first. A fill in progress
  (`<key>.part`) counts toward the bound; a fill that fails (a full disk)
  removes its `.part`, and one left by a fill that was killed is removed by
  the next eviction.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

COMPLETE = ".complete"
PART = ".part"


@dataclass(frozen=True)
class Hit:
    path: Path
    hit: bool
    seconds: float
    bytes: int


class ModelCache:
    def __init__(self, root: Path, limit_bytes: int):
        self.root, self.limit = root, limit_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(source: str, version: str) -> str:
        return hashlib.sha256(f"{source}\0{version}".encode()).hexdigest()[:32]

    @contextmanager
    def entry(self, key: str, fill: Callable[[Path], None]) -> Iterator[Hit]:
        """The entry `key`, filled by `fill(directory)` if absent; held in use
        (not evictable) until the block ends."""
        path, lock_path = self.root / key, self.root / f"{key}.lock"
        with open(lock_path, "a+") as lock:
            start = time.perf_counter()
            # Shared: any number of jobs use a complete entry at once (the
            # jobs of a compare group, say); eviction needs it exclusive.
            fcntl.flock(lock, fcntl.LOCK_SH)
            hit = (path / COMPLETE).is_file()
            if not hit:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one fetches; the others wait here
                hit = (path / COMPLETE).is_file()  # filled while we waited
            if not hit:
                self._fill(key, fill)
            os.utime(path)  # least recently used goes first
            seconds = time.perf_counter() - start
            fcntl.flock(lock, fcntl.LOCK_SH)  # in use (as a hit already is): eviction skips it
            if not hit:
                self.evict(keep=key)
            yield Hit(path, hit, seconds, _size(path))

    def _fill(self, key: str, fill: Callable[[Path], None]) -> None:
        """Fill `<key>.part` and move it into place; called under the
        entry's exclusive lock. On any failure (a full disk, a download cut
        short) the `.part` goes, so no half-written entry stays behind."""
        path, tmp = self.root / key, self.root / f"{key}{PART}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        tmp.mkdir()
        try:
            fill(tmp)
            (tmp / COMPLETE).write_text(json.dumps({"bytes": _du(tmp)}))
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the cache fits its bound;
        entries in use (locked) stay. A fill in progress counts toward the
        bound; the `.part` of a fill that was killed (its lock is free) is
        removed. Returns the keys removed."""
        total = self._sweep_parts()
        entries = sorted((p for p in self.root.iterdir() if (p / COMPLETE).is_file()), key=lambda p: p.stat().st_mtime)
        total += sum(_size(p) for p in entries)
        removed = []
        for path in entries:
            if total <= self.limit:
                break
            if path.name == keep:
                continue
            with open(self.root / f"{path.name}.lock", "a+") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a job uses it
                total -= _size(path)
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed

    def _sweep_parts(self) -> int:
        """Remove every `.part` no fill holds (its filler was killed: the
        kernel dropped its lock) and return the bytes of those being filled."""
        filling = 0
        for part in self.root.glob(f"*{PART}"):
            key = part.name.removesuffix(PART)
            with open(self.root / f"{key}.lock", "a+") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    filling += _du(part)  # a fill (or a job on the entry) holds it
                    continue
                shutil.rmtree(part, ignore_errors=True)
        return filling


def _du(directory: Path) -> int:
    """Bytes of the files under `directory` (0 for what vanished meanwhile)."""
    total = 0
    for p in directory.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def _size(entry: Path) -> int:
    try:
        return int(json.loads((entry / COMPLETE).read_text())["bytes"])
    except (OSError, ValueError, KeyError):
        return 0
