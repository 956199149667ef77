"""An artifact is a directory of files plus `manifest.json` (the job spec,
library versions, figures and the sha256 of every file), stored under
`jobs/<id>/`. The manifest goes up last, so an artifact without one is
incomplete; `publish` removes whatever it wrote if any step fails."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from api_client.errors import QFarmError
from api_client.storage import Store, StoreError, open_store, sha256_file

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def artifact_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def file_entries(local_dir: Path) -> list[dict[str, Any]]:
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    return [
        {"path": p.relative_to(local_dir).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in files
    ]


def publish(store: Store, job_id: str, local_dir: Path, manifest: dict[str, Any],
            progress: Callable[[str], None] | None = None) -> str:
    """Upload every file of `local_dir`, verify each, then the manifest.

    Returns the artifact's URL. On any failure the partial upload is deleted.
    """
    prefix = artifact_prefix(job_id)
    files = manifest["files"]
    try:
        for entry in files:
            if progress:
                progress(entry["path"])
            path = local_dir / entry["path"]
            store.put_file(path, prefix + entry["path"])
            store.verify(path, prefix + entry["path"], entry["sha256"])
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        store.put_bytes(body, prefix + MANIFEST)
        if store.get_bytes(prefix + MANIFEST) != body:
            raise StoreError("manifest.json read back differs from what was written")
    except BaseException:
        try:
            store.delete_prefix(prefix)
        except Exception:
            pass
        raise
    return store.uri(prefix)


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
