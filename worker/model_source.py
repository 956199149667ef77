"""Bring the model a job names onto this worker's disk, and hand the
libraries a directory that holds only the files the job may read.

The libraries get `<job>/model/`: a copy of each checked small file
(api_client/contract/modelfiles.py) and a symlink to each checked weight file. Whatever else the
source directory holds (a symlink to /proc/self/environ, a FIFO, training
state, model code of a job that does not allow it) is not there for them to
read or copy into the artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from api_client.contract import checkpoint, sources
from api_client.contract.checkpoint import CheckpointInfo
from api_client.contract.modelfiles import REMOTE_CODE, WANTED, check_small_file, plain_name, wanted
from api_client.errors import QFarmError, first_line
from api_client.infra.storage import open_store
from worker.model_cache import ModelCache


@dataclass
class Fetched:
    """The job's view of its model, what the files say, and how it came."""

    path: Path
    info: CheckpointInfo
    # "local", "hit" or "miss" (from the host's model cache), or "uncached".
    cache: str = "local"
    seconds: float = 0.0


def fetch(model: str, job_dir: Path, remote_code: bool = False, stack: ExitStack | None = None,
          cache: ModelCache | None = None) -> Fetched:
    """The job's view of `model` (see the module's docstring). A fetched
    model comes from the host's cache when `cache` is given; `stack` holds
    the cache entry in use until the job ends."""
    kind = sources.model_source_kind(model)
    start = time.perf_counter()
    how = "local"
    if kind == "local":
        source = sources.local_model_path(model)
        if not source.is_dir():
            raise QFarmError(
                f"model directory {source} does not exist on this worker; a local MODEL must sit on a filesystem "
                f"every worker mounts at the same path (or upload it and submit its s3:// prefix)"
            )
    else:
        version, fill = _s3(model, remote_code) if kind == "s3" else _hub(model, remote_code)
        if cache is None or stack is None or cache.limit <= 0:
            source, how = job_dir / "download", "uncached"
            source.mkdir(parents=True)
            fill(source)
        else:
            entry = stack.enter_context(cache.entry(cache.key(f"{model}\0{remote_code}", version), fill))
            source, how = entry.path, "hit" if entry.hit else "miss"
    seconds = time.perf_counter() - start
    info = checkpoint.inspect(source, remote_code)
    dest = job_dir / "model"
    dest.mkdir(parents=True)
    for f in info.files:
        if f.name.endswith((".safetensors", ".bin")):
            os.symlink(f.target, dest / f.name)  # gigabytes: read in place
        else:
            # Copied as checked: a file swapped for a symlink after the check
            # (the user's own directory, on a shared filesystem) is refused,
            # not followed, so configs and tokenizer files, which end up in
            # the artifact, are the bytes that were checked.
            _copy_unfollowed(f.target, dest / f.name)
    return Fetched(dest, info, how, seconds)


def _copy_unfollowed(target: Path, dest: Path) -> None:
    """Copy `target` (a resolved path), following no symlink on the way."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in target.parts[1:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        src = os.open(target.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError:
        raise QFarmError(f"model file {target} changed after it was checked (now a link or gone): refused") from None
    finally:
        os.close(fd)
    with os.fdopen(src, "rb") as reader:
        if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
            raise QFarmError(f"model file {target} is no longer a regular file: refused")
        with open(dest, "wb") as writer:
            shutil.copyfileobj(reader, writer)


def _s3(model: str, remote_code: bool) -> tuple[str, Callable[[Path], None]]:
    store = open_store(model)
    # Only the prefix's own files that a checkpoint needs: a key with a '/'
    # after the prefix (a sub-folder, or '../x') is never fetched.
    objects = [o for o in store.list("") if plain_name(o.key) and wanted(o.key, remote_code)]
    if not any(o.key == "config.json" for o in objects):
        raise QFarmError(f"{model} holds no config.json: not a Hugging Face checkpoint prefix")
    for o in objects:  # before anything is downloaded
        check_small_file(o.key, o.size, f"{model.rstrip('/')}/{o.key}")
    version = json.dumps(sorted((o.key, o.size, o.version) for o in objects))

    def fill(dest: Path) -> None:
        for obj in objects:
            store.get_file(obj.key, dest / obj.key)
            # The bytes that landed are the ones listed (size and ETag).
            store.verify(dest / obj.key, obj.key, "")

    return version, fill


def _hub(model: str, remote_code: bool) -> tuple[str, Callable[[Path], None]]:
    try:
        from huggingface_hub import HfApi, snapshot_download

        revision = HfApi().model_info(model).sha or "main"
    except Exception as exc:  # noqa: BLE001 - any hub failure is one line for the user
        raise QFarmError(f"cannot download {model} from the Hugging Face hub: {first_line(exc)}") from None
    patterns = list(WANTED + REMOTE_CODE) if remote_code else list(WANTED)

    def fill(dest: Path) -> None:
        try:
            snapshot_download(model, revision=revision, local_dir=dest, allow_patterns=patterns)
        except Exception as exc:  # noqa: BLE001 - any hub failure is one line for the user
            raise QFarmError(f"cannot download {model} from the Hugging Face hub: {first_line(exc)}") from None

    return revision, fill
