"""When a running job is lost: the one rule the reconciler and `qfarm
requeue` apply before a job is taken from its worker.

A worker's heartbeat can go stale while the worker lives: a host whose CPUs
are starved for minutes, a database that answered slowly. Taking such a job
back runs it twice and throws away the work done. So a job is taken back
only when its attempt is provably over:

- its job process is gone from its host (seen by a reconciler on the same
  host and PID namespace: `/proc` has no process of that pid and start time);
- or its worker's heartbeat is older than QFARM_HEARTBEAT_TIMEOUT (or the
  worker said it stopped) *and* the job process has not advanced for as
  long: the job process writes `progress_at` whenever its CPU time grew
  (worker/pulse.py), and a reconciler on its host also reads that CPU time
  from `/proc` itself, so a pulse thread that could not run does not count
  against a process that computes;
- or its worker's heartbeat is current but names another job, written well
  after the job's last change (the job process died under a live worker).

A process is named by `process_key()`: the host's boot id, the PID
namespace, the pid and the process's start time, so a pid reused after a
reboot or by another process never passes for the job's.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from api_client.config import Settings
from api_client.infra.db.jobs import aware
from api_client.infra.db.models import Job, Worker, utcnow

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def process_key(pid: int | None = None) -> str | None:
    """This process's (or `pid`'s) identity on this host, `BOOT:NS:PID:START`;
    None off Linux or when there is no such process."""
    pid = os.getpid() if pid is None else pid
    try:
        return f"{_host_scope()}:{pid}:{_stat(pid)[19]}"
    except (OSError, IndexError, ValueError):
        return None


def _host_scope() -> str:
    """This host's boot id and this process's PID namespace (the inode of
    `pid:[N]`): pids are comparable only within one of each."""
    namespace = os.readlink("/proc/self/ns/pid")
    return f"{_BOOT_ID.read_text().strip()}:{namespace[namespace.index('[') + 1:-1]}"


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold
    spaces and parentheses): index 0 is the state, 11-12 utime and stime,
    19 the start time."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw.rsplit(")", 1)[1].split()


def _local_pid(key: str | None) -> int | None:
    """The pid `key` names when it is a process of this host and PID
    namespace (one this process can look up), else None."""
    if not key or key.count(":") != 3:
        return None
    boot, namespace, pid, _ = key.split(":")
    try:
        if f"{boot}:{namespace}" != _host_scope():
            return None
        return int(pid)
    except (OSError, ValueError):
        return None


def process_alive(key: str | None) -> bool | None:
    """True: the process `key` names runs (it may be stopped or starved);
    False: it is gone; None: not this host's (or PID namespace's) to say."""
    fields = _fields_of(key)
    if fields is None:
        return None
    return bool(fields) and fields[0] not in ("Z", "X")


def cpu_seconds(key: str | None) -> float | None:
    """CPU time (user + system) of the live local process `key` names, or None."""
    fields = _fields_of(key)
    if not fields or fields[0] in ("Z", "X"):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fields_of(key: str | None) -> list[str] | None:
    """/proc's fields of the local process `key` names; [] when that process
    is gone (or its pid now names another); None when `key` is not local."""
    pid = _local_pid(key)
    if pid is None or key is None:
        return None
    try:
        fields = _stat(pid)
    except OSError:
        return []
    return fields if f"{pid}:{fields[19]}" == key.split(":", 2)[2] else []


def _advancing(job: Job, timeout_s: float) -> bool:
    """Whether the job's process advanced within the timeout: its pulse says
    so, or this host sees its CPU time past the pulse's last figure."""
    if job.progress_at is not None and utcnow() - aware(job.progress_at) <= timedelta(seconds=timeout_s):
        return True
    cpu = cpu_seconds(job.process)
    return cpu is not None and cpu > (job.progress_cpu_s or 0.0) + 0.5


def lost_reason(job: Job, owner: Worker | None, settings: Settings) -> str | None:
    """Why the running `job` is provably lost to its worker `owner` (its
    row, None if it has none), as the event will say; None while it may
    still run."""
    timeout = settings.heartbeat_timeout_s
    process = process_alive(job.process)
    fresh = owner is not None and owner.stopped_at is None and \
        utcnow() - aware(owner.heartbeat_at) <= timedelta(seconds=timeout)
    if fresh and owner is not None:
        grace = timedelta(seconds=2 * settings.heartbeat_interval_s)
        # The worker lives, but a heartbeat written well after the job's
        # last change says it runs something else: its job process died.
        if process is not True and owner.current_job != job.id and \
                aware(owner.heartbeat_at) > aware(job.updated_at) + grace:
            return f"worker lost: {job.worker} no longer runs it"
        return None
    if process is not False and _advancing(job, timeout):
        return None  # a starved or stopped worker whose job still computes: never taken from it
    proof = "its job process is gone from this host" if process is False else "its job process stopped advancing"
    if owner is None:
        return f"worker lost: {job.worker} has no heartbeat, and {proof}"
    if owner.stopped_at is not None:
        return f"worker lost: {job.worker} stopped, and {proof}"
    age = (utcnow() - aware(owner.heartbeat_at)).total_seconds()
    return f"worker lost: no heartbeat from {job.worker} for {age:.0f} s, and {proof}"
