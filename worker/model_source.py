"""Bring the model a job names onto this worker's disk, and hand the
libraries a directory that holds only the files the job may read.

The libraries get `<job>/model/`: one symlink per checked file
(api_client/modelfiles.py) to the file it resolves to. Whatever else the
source directory holds (a symlink to /proc/self/environ, a FIFO, training
state, model code of a job that does not allow it) is not there for them to
read or copy into the artifact.
"""

from __future__ import annotations

import os
from pathlib import Path

from api_client import checkpoint, sources
from api_client.checkpoint import CheckpointInfo
from api_client.errors import QFarmError, first_line
from api_client.modelfiles import REMOTE_CODE, WANTED, plain_name, wanted
from api_client.storage import open_store


def fetch(model: str, job_dir: Path, remote_code: bool = False) -> tuple[Path, CheckpointInfo]:
    """The job's view of `model` (see the module's docstring) and what its
    files say."""
    kind = sources.model_source_kind(model)
    if kind == "local":
        source = sources.local_model_path(model)
        if not source.is_dir():
            raise QFarmError(
                f"model directory {source} does not exist on this worker; a local MODEL must sit on a filesystem "
                f"every worker mounts at the same path (or upload it and submit its s3:// prefix)"
            )
    elif kind == "s3":
        source = _fetch_s3(model, job_dir / "download", remote_code)
    else:
        source = _fetch_hub(model, job_dir / "download", remote_code)
    info = checkpoint.inspect(source, remote_code)
    dest = job_dir / "model"
    dest.mkdir(parents=True)
    for f in info.files:
        os.symlink(f.target, dest / f.name)
    return dest, info


def _fetch_s3(model: str, dest: Path, remote_code: bool) -> Path:
    store = open_store(model)
    # Only the prefix's own files that a checkpoint needs: a key with a '/'
    # after the prefix (a sub-folder, or '../x') is never fetched.
    objects = [o for o in store.list("") if plain_name(o.key) and wanted(o.key, remote_code)]
    if not any(o.key == "config.json" for o in objects):
        raise QFarmError(f"{model} holds no config.json: not a Hugging Face checkpoint prefix")
    dest.mkdir(parents=True)
    for obj in objects:
        store.get_file(obj.key, dest / obj.key)
    return dest


def _fetch_hub(model: str, dest: Path, remote_code: bool) -> Path:
    try:
        from huggingface_hub import snapshot_download

        patterns = list(WANTED + REMOTE_CODE) if remote_code else list(WANTED)
        return Path(snapshot_download(model, local_dir=dest, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - any hub failure is one line for the user
        raise QFarmError(f"cannot download {model} from the Hugging Face hub: {first_line(exc)}") from None
