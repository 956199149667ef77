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
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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

    @property
    def killed(self) -> str | None:
        return signal.Signals(self.signal).name if self.signal else None


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

    # Blocked across the fork, so a signal that comes meanwhile is neither
    # lost nor handled by the wrong process.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, PASSED_ON)
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the job process
        os.close(report_r)
        _die_with_parent(parent)
        for signum, handler in (handlers or {}).items():
            signal.signal(signum, handler)
        _child(job, report_w, previous_mask)
    os.close(report_w)
    previous = {s: signal.signal(s, pass_on) for s in PASSED_ON}
    child = pid
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
    if os.WIFSIGNALED(status):
        return Ended(pid, None, os.WTERMSIG(status), exit_seconds)
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
