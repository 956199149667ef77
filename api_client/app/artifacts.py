"""An artifact is a directory of files plus `manifest.json` (the job spec,
library versions, figures and the sha256 of every file), stored under
`jobs/<id>/`. The manifest goes up last, so an artifact without one is
incomplete; `publish` removes whatever it wrote if any step fails."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from api_client.errors import QFarmError
from api_client.infra.storage import Store, StoredObject, StoreError, TransferCancelled, open_store, sha256_file
from api_client.redaction import redact_value

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def artifact_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def publish(store: Store, job_id: str, local_dir: Path, manifest: dict[str, Any],
            progress: Callable[[str], None] | None = None) -> str:
    """Upload every file of `local_dir`, verify each, then the manifest.

    Returns the artifact's URL. On any failure the partial upload is deleted.
    """
    return Upload(store, job_id, local_dir, progress).finish(manifest)


def artifact_files(local_dir: Path) -> list[Path]:
    """The regular files of an artifact directory. A symlink there would
    publish whatever it points to, so it fails the upload instead."""
    out = []
    for path in sorted(local_dir.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise StoreError(f"artifact file {path.relative_to(local_dir)} is not a regular file: refused")
        if path.is_file():
            out.append(path)
    return out


class Upload:
    """An artifact's files going up in a background thread.

    A worker starts it as soon as the artifact is written, so hashing,
    uploading and verifying the files overlap the evaluation instead of
    following it; `finish` then waits for the files and writes the manifest,
    the last object, so an artifact without one is known to be incomplete.
    `abort` (or any failure in `finish`) removes whatever was written.
    """

    def __init__(self, store: Store, job_id: str, local_dir: Path, progress: Callable[[str], None] | None = None):
        self.store, self.prefix, self.local_dir, self.progress = store, artifact_prefix(job_id), local_dir, progress
        self.files: list[dict[str, Any]] = []
        self.checksum: str | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._upload_files, name=f"upload-{job_id}", daemon=True)
        self._thread.start()

    def _upload_files(self) -> None:
        try:
            # A clean prefix: what an earlier attempt of the job left is gone.
            self.store.delete_prefix(self.prefix)
            for path in artifact_files(self.local_dir):
                rel = path.relative_to(self.local_dir).as_posix()
                if self.progress:
                    self.progress(rel)
                digest = sha256_file(path)
                entry = {"path": rel, "bytes": path.stat().st_size, "sha256": digest}
                self._check_stop()
                self.store.put_file(path, self.prefix + rel, should_stop=self._stop.is_set)
                self._check_stop()
                self.store.verify(path, self.prefix + rel, digest)
                self.files.append(entry)
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that calls finish
            self._error = exc

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise TransferCancelled("upload cancelled")

    def finish(self, manifest: dict[str, Any]) -> str:
        """Wait for the files, then write `manifest` with their sizes and
        sha256 under "files". Returns the artifact's URL."""
        try:
            self._thread.join()
            if self._error is not None:
                raise self._error
            # Figures and errors a library or a user's file wrote are
            # redacted like the job row's; the file list is the store's own.
            manifest = {**redact_value(manifest), "files": self.files}
            self.checksum = manifest["artifact_sha256"] = artifact_checksum(self.files)
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            self.store.put_bytes(body, self.prefix + MANIFEST)
            if self.store.get_bytes(self.prefix + MANIFEST) != body:
                raise StoreError("manifest.json read back differs from what was written")
        except BaseException:
            try:
                self.abort()
            except Exception:  # noqa: BLE001 - the failure being raised matters more than its cleanup
                pass
            raise
        return self.store.uri(self.prefix)

    def abort(self) -> None:
        """Stop the upload and delete what it wrote."""
        self._stop.set()
        self._thread.join()
        self.store.delete_prefix(self.prefix)


def artifact_checksum(files: list[dict[str, Any]]) -> str:
    """One sha256 for a whole artifact: of its files' paths and sha256s, in
    path order. Two runs that wrote the same files give the same one, where
    the files' own order of upload or their timestamps would differ."""
    import hashlib

    digest = hashlib.sha256()
    for entry in sorted(files, key=lambda e: e["path"]):
        digest.update(f"{entry['path']}\0{entry['sha256']}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Incomplete:
    """An artifact prefix without its manifest: an upload cut short."""

    job_id: str
    prefix: str
    objects: int
    bytes: int
    newest: datetime | None


def incomplete(store: Store, older_than_s: float) -> list[Incomplete]:
    """Manifest-less artifact prefixes none of whose objects is younger than
    `older_than_s` (a running upload's newest object is always young)."""
    groups: dict[str, list[StoredObject]] = {}
    for obj in store.list("jobs/"):
        job_id = obj.key.split("/")[1] if obj.key.count("/") >= 2 else ""
        if job_id:
            groups.setdefault(job_id, []).append(obj)
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=older_than_s)
    out = []
    for job_id, objs in sorted(groups.items()):
        if any(o.key == f"jobs/{job_id}/{MANIFEST}" for o in objs):
            continue
        newest = max((o.modified for o in objs if o.modified), default=None)
        if newest is not None and newest > cutoff:
            continue
        out.append(Incomplete(job_id, artifact_prefix(job_id), len(objs), sum(o.size for o in objs), newest))
    return out


def read_manifest(artifact_uri: str) -> dict[str, Any]:
    store = open_store(artifact_uri)
    try:
        manifest = json.loads(store.get_bytes(MANIFEST))
    except (StoreError, ValueError) as exc:
        raise QFarmError(f"artifact at {artifact_uri} has no readable manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise QFarmError(f"artifact at {artifact_uri} has a manifest that is not a JSON object")
    return manifest


def manifest_files(manifest: Any, artifact_uri: str) -> list[dict[str, Any]]:
    """The manifest's file entries, each a relative path that stays inside
    the directory it is downloaded to. A store is shared: whoever can write
    to it could list `../../.bashrc` or `/etc/cron.d/x` in a manifest, so any
    such entry refuses the whole download before anything is written."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list):
        raise QFarmError(f"the manifest of {artifact_uri} has no list of files")
    for entry in files:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not isinstance(entry.get("sha256"), str):
            raise QFarmError(f"the manifest of {artifact_uri} has a malformed file entry: refused")
        parts = path.split("/")
        if (path.startswith("/") or "\\" in path or not path.isprintable() or path == MANIFEST
                or any(p in ("", ".", "..") for p in parts)):
            raise QFarmError(f"the manifest of {artifact_uri} lists the unsafe path {path!r}: refused, nothing was written")
    return files


def download(artifact_uri: str, dest: Path,
             progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fetch the artifact into `dest` (new or empty), checking every sha256.

    Files land in a temporary sibling first, so `dest` only ever holds a
    complete, verified artifact.
    """
    dest = dest.expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise QFarmError(f"{dest} exists and is not an empty directory")
    store = open_store(artifact_uri)
    manifest = read_manifest(artifact_uri)
    entries = manifest_files(manifest, artifact_uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    # mkdtemp makes 0700; the artifact lands with the mode any new directory gets.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        for entry in entries:
            target = tmp / entry["path"]
            if tmp.resolve() not in target.resolve().parents:
                raise QFarmError(f"the manifest of {artifact_uri} lists {entry['path']!r}, which leaves DEST: refused")
            store.get_file(entry["path"], target)
            digest = sha256_file(target)
            if digest != entry["sha256"]:
                raise QFarmError(f"{entry['path']} is corrupt: sha256 {digest[:12]}… differs from the manifest's {entry['sha256'][:12]}…")
            if progress:
                progress(entry)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
