"""The lm-eval tasks a job asked for, made ready on this worker's disk: the
builtin task written from qfarm's held-out book, a --tasks-dir fetched from
the store and unpacked (safely: no member may leave the directory)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from api_client import lm_tasks
from api_client.errors import QFarmError
from api_client.spec import EvalSpec
from api_client.texts import builtin_text
from worker import texts
from worker.evaluators.tasks import TaskRun


def prepare(spec: EvalSpec, dest: Path, allow_code: bool) -> TaskRun | None:
    """Called before quantizing, so a task directory that cannot be used
    fails the job before its GPU time is spent. `allow_code`: the job asked
    for --allow-remote-code and this worker was started with it."""
    if not spec.tasks:
        return None
    include = []
    if lm_tasks.BUILTIN_TASK in spec.tasks:
        include.append(lm_tasks.write_builtin(dest / "builtin", builtin_text("eval")))
    if spec.tasks_dir:
        user = _unpack(spec.tasks_dir, dest / "user")
        # Checked again here: the message could come from anyone who can
        # write to the broker, not only through `qfarm submit`.
        code = lm_tasks.runs_code(user)
        if code and not allow_code:
            raise QFarmError(f"the job's task directory runs code ({code}) and the job or this worker does not allow "
                             f"remote code (--allow-remote-code)")
        include.append(user)
    registry = [n for n in spec.tasks if n != lm_tasks.BUILTIN_TASK] if not spec.tasks_dir else []
    return TaskRun(names=list(spec.tasks), include=include, limit=spec.tasks_limit, offline=not registry)


def _unpack(uri: str, dest: Path) -> Path:
    raw, _ = texts.read_input(uri, "task directory archive")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        members = tar.getmembers()
        total = sum(m.size for m in members)
        if total > lm_tasks.MAX_TASKS_DIR_BYTES:
            raise QFarmError(f"task directory archive {uri} unpacks to {total / 2**20:.0f} MiB, more than "
                             f"{lm_tasks.MAX_TASKS_DIR_BYTES // 2**20} MiB")
        # The "data" filter refuses links leaving dest, absolute names and devices.
        tar.extractall(dest, members=members, filter="data")
    return dest
