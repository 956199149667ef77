"""Each job runs in a process forked for it from the long-lived pool
process: its outcome comes back as the exit code, signals Celery sends the
pool process reach it, and it never outlives the pool process."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from worker import job_process


def test_the_job_runs_in_a_fresh_process_and_its_code_comes_back():
    parent = os.getpid()
    ended = job_process.run(lambda: 3 if os.getpid() != parent else 9)
    assert (ended.code, ended.signal) == (3, None) and ended.pid != parent
    assert not psutil.pid_exists(ended.pid)


def test_an_exception_in_the_job_is_a_crash_not_a_hang():
    def job():
        raise RuntimeError("boom")

    assert job_process.run(job).code == job_process.CRASHED


def test_a_killed_job_process_is_reported_with_its_signal():
    ended = job_process.run(lambda: os.kill(os.getpid(), signal.SIGKILL) or 0)
    assert ended.code is None and ended.killed == "SIGKILL"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_sigterm_and_the_soft_time_limit_reach_the_job(tmp_path, signum):
    # The job's handler answers with the signal it got; the test's own
    # handler (the pool process's) must not run.
    got = []
    previous = signal.signal(signum, lambda s, f: got.append(s))

    def handler(s, f):
        os._exit(100 + s)

    def job():
        (tmp_path / "ready").touch()
        time.sleep(30)
        return 0

    try:
        pid = os.getpid()
        sender = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import os, time, pathlib
            while not pathlib.Path({str(tmp_path / 'ready')!r}).exists():
                time.sleep(0.05)
            os.kill({pid}, {int(signum)})
        """)])
        start = time.monotonic()
        ended = job_process.run(job, {signum: handler})
        sender.wait(10)
    finally:
        signal.signal(signum, previous)
    assert ended.code == 100 + signum and time.monotonic() - start < 20
    assert got == []
    assert signal.getsignal(signum) is previous  # the pool process's handler is back


POOL = """
import sys, time
from worker import job_process
job_process.run(lambda: (open(sys.argv[1], "w").write("started"), time.sleep(60))[0] and 0)
"""


def test_the_job_dies_with_its_pool_process(tmp_path):
    # Celery's hard time limit SIGKILLs the pool process: the job must not
    # run on unwatched, holding the GPU.
    marker = tmp_path / "started"
    pool = subprocess.Popen([sys.executable, "-c", POOL, str(marker)], cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        (job,) = psutil.Process(pool.pid).children()
        pool.kill()
        pool.wait(10)
        job.wait(10)  # psutil.TimeoutExpired if it lives on
    finally:
        pool.kill()


def test_celery_s_soft_time_limit_raises_inside_the_job(tmp_path):
    # billiard installs its SIGUSR1 handler in the pool process; the job,
    # forked from it, inherits the handler, and the signal Celery sends the
    # pool process raises SoftTimeLimitExceeded in the job (the runner
    # records "ran past the time limit").
    from billiard.exceptions import SoftTimeLimitExceeded
    from billiard.pool import soft_timeout_sighandler

    def job():
        try:
            # Inside the try: the signal can come as soon as the file exists.
            (tmp_path / "ready").touch()
            time.sleep(30)
        except SoftTimeLimitExceeded:
            return 42
        return 0

    previous = signal.signal(signal.SIGUSR1, soft_timeout_sighandler)
    try:
        sender = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import os, time, pathlib
            while not pathlib.Path({str(tmp_path / 'ready')!r}).exists():
                time.sleep(0.05)
            os.kill({os.getpid()}, {int(signal.SIGUSR1)})
        """)])
        ended = job_process.run(job)  # no handler of its own: billiard's, inherited
        sender.wait(10)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert ended.code == 42


def test_a_job_past_its_memory_limit_is_stopped_with_a_reason_naming_memory(monkeypatch):
    """The pool process watches its job's resident memory: past the limit
    (QFARM_JOB_MEMORY_LIMIT) the job is stopped at once, and the reason says
    memory and the limit, where the kernel would have killed it (or the
    host) with a bare SIGKILL."""
    limit = psutil.Process().memory_info().rss + 200 * 2**20
    monkeypatch.setenv("QFARM_JOB_MEMORY_LIMIT", str(limit))

    def bomb():
        held = []
        for _ in range(40):  # 2.5 GiB if nothing stopped it
            held.append(b"\1" * (64 * 2**20))
            time.sleep(0.05)
        return 0

    start = time.monotonic()
    ended = job_process.run(bomb)
    assert ended.killed == "SIGKILL" and ended.code is None
    assert ended.memory is not None and "of memory, more than its limit" in ended.memory
    assert f"{limit / 2**30:.2f} GiB (QFARM_JOB_MEMORY_LIMIT {limit})" in ended.memory
    assert time.monotonic() - start < 10
    # A job that stays under its limit ends as it always did.
    assert job_process.run(lambda: 5).memory is None


def test_the_memory_limit_is_a_share_of_the_host_or_a_size(monkeypatch):
    total = job_process.host_memory()
    monkeypatch.delenv("QFARM_JOB_MEMORY_LIMIT", raising=False)
    assert job_process.memory_limit().bytes == int(total * 0.8)
    monkeypatch.setenv("QFARM_JOB_MEMORY_LIMIT", "24GiB")
    assert job_process.memory_limit().bytes == 24 * 2**30
    monkeypatch.setenv("QFARM_JOB_MEMORY_LIMIT", "off")
    assert job_process.memory_limit() is None
    monkeypatch.setenv("QFARM_JOB_MEMORY_LIMIT", "150%")
    with pytest.raises(Exception, match="QFARM_JOB_MEMORY_LIMIT must be a share of memory"):
        job_process.memory_limit()
