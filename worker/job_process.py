"""Each job in a fresh process, forked from a Celery pool process that lives
on between jobs.

Celery's prefork pool used to replace its process after every job
(`worker_max_tasks_per_child = 1`). The replacement's start (billiard's exit,
the pool's maintenance timer, Celery's process set-up) left the GPU idle
1-6 s between one job's end and the next one's start, with the queue full.
Now the pool process stays and forks one child per job: forking a process
that already holds the preloaded libraries takes milliseconds, and each job
still runs in a process of its own, whose CUDA context, allocator caches and
library globals end with it. The pool process never touches the GPU.

What Celery sends the pool process reaches the job:
- SIGTERM (a cancel, the worker stopping, the broker lost) is passed on; the
  job hands itself back or records the cancel, and the pool process waits.
- SIGUSR1 (the soft time limit) is passed on, where billiard's handler,
  inherited through the fork, raises SoftTimeLimitExceeded as it always did.
- The hard time limit SIGKILLs the pool process: the job dies with it
  (PR_SET_PDEATHSIG), and Celery's worker-lost path takes over as before.

Each job runs under a memory limit derived from the host (`memory_limit`):
a job that grows past it is stopped, and the job fails with a reason naming
memory instead of taking the host down or being retried as a lost worker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api_client.config import JOB_MEMORY_LIMIT, Settings

log = logging.getLogger("qfarm.worker")

# What Celery sends a pool process that the job must receive.
PASSED_ON = (signal.SIGTERM, signal.SIGUSR1)
# The child's exit status for an exception that escaped the job function.
CRASHED = 70


@dataclass(frozen=True)
class Ended:
    """How the job process ended: its exit code, or the signal that killed it."""

    pid: int
    code: int | None
    signal: int | None
    # From the child's report of its result to its exit (log flush, then
    # the kernel tearing down its memory and CUDA context).
    exit_seconds: float

    # Why the process was stopped for its memory (None: it was not).
    memory: str | None = None

    @property
    def killed(self) -> str | None:
        return signal.Signals(self.signal).name if self.signal else None


# -- memory ------------------------------------------------------------------------
# How the limit is enforced, and why this way: RLIMIT_AS would count virtual
# address space, and CUDA reserves terabytes of it (as do mmapped weights and
# the thread arenas of a process that has imported torch), so it breaks GPU
# workers and misfires on CPU ones; a cgroup needs a delegated, writable
# hierarchy that workers in containers rarely have. So the pool process
# watches its job's resident memory (the job process and its children) and
# SIGKILLs it past the limit, which works the same on GPU and CPU workers
# without privileges. A bomb faster than the watch (it looks every
# WATCH_INTERVAL_S) meets the kernel's OOM killer instead: the job process
# volunteers for it (oom_score_adj 1000, so the host's other processes are
# spared) and its death is then told by the kernel's oom_kill count.
WATCH_INTERVAL_S = 0.2


@dataclass(frozen=True)
class MemoryLimit:
    bytes: int
    # Where the figure comes from, for the job's reason.
    said: str


def host_memory() -> int:
    """This host's memory as the worker may use it: physical RAM, or less
    where the worker's container (cgroup v2 or v1) is limited."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and 0 < int(raw) < total:
            total = int(raw)
    return total


def memory_limit() -> MemoryLimit | None:
    """QFARM_JOB_MEMORY_LIMIT: a share of the host's memory (`80%`, the
    default: the worker's own processes and the system keep the rest) or a
    size (`24GiB`); `off` for none. Hosts running several workers give each
    its share (`40%` for two). A share becomes bytes here, on the host the
    job runs on."""
    setting = Settings.from_env().job_memory_limit
    if setting is None:
        return None
    if setting.share is not None:
        total = host_memory()
        return MemoryLimit(int(total * setting.share), f"{JOB_MEMORY_LIMIT.name} {setting.text} of this host's {total / 2**30:.1f} GiB")
    return MemoryLimit(setting.bytes or 0, f"{JOB_MEMORY_LIMIT.name} {setting.text}")


def _resident(pid: int) -> int:
    """Resident memory of the process and its children, in bytes."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def _oom_kills() -> int | None:
    """The kernel's count of OOM kills since boot (/proc/vmstat)."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class _Watch(threading.Thread):
    """Stops the job process once it holds more than the limit."""

    def __init__(self, pid: int, limit: MemoryLimit):
        super().__init__(name="qfarm-memory-watch", daemon=True)
        self.pid, self.limit = pid, limit
        self.stop = threading.Event()
        self.peak = 0
        self.exceeded: str | None = None
        self.oom_kills = _oom_kills()

    def run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, PASSED_ON)  # the job's signals are the main thread's
        while not self.stop.wait(WATCH_INTERVAL_S):
            rss = _resident(self.pid)
            self.peak = max(self.peak, rss)
            if rss > self.limit.bytes:
                self.exceeded = (f"the job used {rss / 2**30:.2f} GiB of memory, more than its limit of "
                                 f"{self.limit.bytes / 2**30:.2f} GiB ({self.limit.said})")
                _kill_tree(self.pid)
                return

    def reason(self, killed_by: int | None) -> str | None:
        if self.exceeded or killed_by != signal.SIGKILL:
            return self.exceeded
        now = _oom_kills()
        if self.oom_kills is not None and now is not None and now > self.oom_kills:
            return (f"the kernel's out-of-memory killer stopped the job (it held {self.peak / 2**30:.2f} GiB at the "
                    f"last look; its limit is {self.limit.bytes / 2**30:.2f} GiB, {self.limit.said})")
        return None


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [*proc.children(recursive=True), proc]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def run(job: Callable[[], int], handlers: dict[int, Callable[[int, Any], Any]] | None = None) -> Ended:
    """Run `job` in a forked child and wait for it. `job` returns the exit
    code; an exception escaping it is logged and exits with CRASHED.
    `handlers` are the child's signal handlers, set before any signal can
    reach it."""
    child: int | None = None
    parent = os.getpid()
    pending: list[int] = []

    def pass_on(signum: int, _frame: object) -> None:
        if child is None:
            pending.append(signum)
            return
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    limit = memory_limit()
    # Blocked across the fork, so a signal that comes meanwhile is neither
    # lost nor handled by the wrong process.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, PASSED_ON)
    # Set before the fork: another thread of this process (a library's,
    # the memory watch's) may take a signal this thread blocks, and then
    # runs the handler set at that moment, which must be this one.
    previous: dict[int, Any] = {s: signal.signal(s, pass_on) for s in PASSED_ON}
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the job process
        os.close(report_r)
        _die_with_parent(parent)
        _first_to_go()
        # The pool process's own handlers (billiard's soft time limit), then the job's.
        own: dict[int, Any] = {**previous, **(handlers or {})}
        for signum, handler in own.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        _child(job, report_w, previous_mask)
    os.close(report_w)
    child = pid
    watch = _Watch(pid, limit) if limit else None
    if watch:
        watch.start()
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        for signum in pending:
            pass_on(signum, None)
        # The child writes one byte once its job is over, then exits.
        reported = os.read(report_r, 1)
        reported_at = time.monotonic()
        _, status = os.waitpid(pid, 0)
        exit_seconds = time.monotonic() - reported_at if reported else 0.0
    finally:
        os.close(report_r)
        for s, before in previous.items():
            signal.signal(s, before)
        if watch:
            watch.stop.set()
            watch.join()
    if os.WIFSIGNALED(status):
        killed_by = os.WTERMSIG(status)
        return Ended(pid, None, killed_by, exit_seconds, watch.reason(killed_by) if watch else None)
    return Ended(pid, os.waitstatus_to_exitcode(status), None, exit_seconds)


def _child(job: Callable[[], int], report_w: int, mask: set) -> None:
    code = CRASHED
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        code = job()
    except BaseException:  # whatever it was, this process ends here
        log.exception("the job process failed")
    finally:
        try:
            os.write(report_w, b"x")
            for handler in logging.getLogger().handlers + log.handlers:
                handler.flush()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            # No interpreter teardown: the caching allocator, the libraries'
            # atexit hooks and thread joins would only delay the next job.
            os._exit(code)


def _first_to_go() -> None:
    """Offer this job process to the kernel's OOM killer before anything
    else on the host (raising one's own score needs no privilege)."""
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process if its parent, the pool process,
    dies (the hard time limit, an OOM kill): a job never runs on unwatched."""
    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(CRASHED)
