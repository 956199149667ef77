"""The lm-eval tasks a job asked for, made ready on this worker's disk: the
builtin task written from qfarm's held-out book, a --tasks-dir fetched from
the store and unpacked (safely: no member may leave the directory) and read
as data again (api_client/contract/task_yaml.py), as the message need not have come
through `qfarm submit`."""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from pathlib import Path

from api_client.contract import lm_eval_tasks, task_yaml
from api_client.contract.corpus import builtin_text
from api_client.contract.spec import EvalSpec
from api_client.errors import QFarmError, SpecError
from worker import texts
from worker.evaluators.task_accuracy import TaskRun


def prepare(spec: EvalSpec, dest: Path, allow_code: bool) -> TaskRun | None:
    """Called before quantizing, so a task directory that cannot be used
    fails the job before its GPU time is spent. `allow_code`: the job asked
    for --allow-remote-code and this worker was started with it."""
    if not spec.tasks:
        return None
    include, defined, hub = [], {lm_eval_tasks.BUILTIN_TASK}, set()
    if lm_eval_tasks.BUILTIN_TASK in spec.tasks:
        include.append(lm_eval_tasks.write_builtin(dest / "builtin", builtin_text("eval")))
    if spec.tasks_dir:
        user = _unpack(spec.tasks_dir, dest / "user")
        try:
            loaded = task_yaml.load(user, allow_code)
        except task_yaml.RunsCode as exc:
            raise QFarmError(f"the job's task directory runs code ({exc}) and the job or this worker does not allow "
                             f"remote code (--allow-remote-code)") from None
        except SpecError as exc:
            raise QFarmError(f"the job's task directory: {exc}") from None
        include.append(user)
        defined |= loaded.defined
        hub |= loaded.hub_datasets
    # Names no directory defines come from lm-eval's registry, which needs
    # the hub, as do hub datasets; everything else runs offline.
    registry = [n for n in spec.tasks if n not in defined]
    return TaskRun(names=list(spec.tasks), include=include, limit=spec.tasks_limit, offline=not registry and not hub,
                   allow_code=allow_code)


def _unpack(uri: str, dest: Path) -> Path:
    raw, _ = texts.read_input(uri, "task directory archive", lm_eval_tasks.MAX_TASKS_DIR_BYTES)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            # Member by member, so a compression bomb is refused once the
            # sizes it declares pass the cap, not after it was inflated whole.
            members, total = [], 0
            for member in tar:
                members.append(member)
                total += member.size
                if total > lm_eval_tasks.MAX_TASKS_DIR_BYTES or len(members) > lm_eval_tasks.MAX_TASKS_DIR_FILES:
                    raise QFarmError(f"task directory archive {uri} unpacks to more than "
                                     f"{lm_eval_tasks.MAX_TASKS_DIR_BYTES // 2**20} MiB or "
                                     f"{lm_eval_tasks.MAX_TASKS_DIR_FILES} files")
            # The "data" filter refuses links leaving dest, absolute names and devices.
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        # A link leaving the directory, an absolute name, a device, a broken archive.
        raise QFarmError(f"task directory archive {uri} refused: {exc}") from None
    return dest
