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
from pathlib import Path
from typing import Any, Callable

from api_client.errors import QFarmError
from api_client.storage import Store, StoreError, TransferCancelled, open_store, sha256_file

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
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._upload_files, name=f"upload-{job_id}", daemon=True)
        self._thread.start()

    def _upload_files(self) -> None:
        try:
            for path in sorted(p for p in self.local_dir.rglob("*") if p.is_file()):
                rel = path.relative_to(self.local_dir).as_posix()
                if self.progress:
                    self.progress(rel)
                entry = {"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
                self._check_stop()
                self.store.put_file(path, self.prefix + rel, should_stop=self._stop.is_set)
                self._check_stop()
                self.store.verify(path, self.prefix + rel, entry["sha256"])
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
            manifest["files"] = self.files
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            self.store.put_bytes(body, self.prefix + MANIFEST)
            if self.store.get_bytes(self.prefix + MANIFEST) != body:
                raise StoreError("manifest.json read back differs from what was written")
        except BaseException:
            try:
                self.abort()
            except Exception:
                pass
            raise
        return self.store.uri(self.prefix)

    def abort(self) -> None:
        """Stop the upload and delete what it wrote."""
        self._stop.set()
        self._thread.join()
        self.store.delete_prefix(self.prefix)


def read_manifest(artifact_uri: str, s3_endpoint_url: str | None) -> dict[str, Any]:
    store = open_store(artifact_uri, s3_endpoint_url)
    try:
        return json.loads(store.get_bytes(MANIFEST))
    except StoreError as exc:
        raise QFarmError(f"artifact at {artifact_uri} has no readable manifest: {exc}") from None


def download(artifact_uri: str, dest: Path, s3_endpoint_url: str | None,
             progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fetch the artifact into `dest` (new or empty), checking every sha256.

    Files land in a temporary sibling first, so `dest` only ever holds a
    complete, verified artifact.
    """
    dest = dest.expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise QFarmError(f"{dest} exists and is not an empty directory")
    store = open_store(artifact_uri, s3_endpoint_url)
    manifest = read_manifest(artifact_uri, s3_endpoint_url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for entry in manifest["files"]:
            target = tmp / entry["path"]
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
