"""The lm-eval tasks a job asked for, made ready on this worker's disk: the
builtin task written from qfarm's held-out book, a --tasks-dir fetched from
the store and unpacked (safely: no member may leave the directory)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from api_client import lm_tasks, sources
from api_client.errors import QFarmError
from api_client.spec import EvalSpec
from api_client.storage import open_store
from api_client.texts import builtin_text
from worker.evaluators.tasks import TaskRun


def prepare(spec: EvalSpec, dest: Path) -> TaskRun | None:
    if not spec.tasks:
        return None
    include = []
    if lm_tasks.BUILTIN_TASK in spec.tasks:
        include.append(lm_tasks.write_builtin(dest / "builtin", builtin_text("eval")))
    if spec.tasks_dir:
        include.append(_unpack(spec.tasks_dir, dest / "user"))
    registry = [n for n in spec.tasks if n != lm_tasks.BUILTIN_TASK] if not spec.tasks_dir else []
    return TaskRun(names=list(spec.tasks), include=include, limit=spec.tasks_limit, offline=not registry)


def _unpack(uri: str, dest: Path) -> Path:
    if uri.startswith("s3://"):
        loc = sources.parse_s3_url(uri)
        parent, _, name = loc.key.rpartition("/")
        raw = open_store(f"s3://{loc.bucket}/{parent}").get_bytes(name)
    else:
        path = Path(unquote(urlparse(uri).path)) if uri.startswith("file://") else Path(uri)
        if not path.is_file():
            raise QFarmError(f"task directory archive {uri} does not exist on this worker")
        raw = path.read_bytes()
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        # The "data" filter refuses links leaving dest, absolute names and devices.
        tar.extractall(dest, filter="data")
    return dest
