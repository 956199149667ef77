"""A live worker is never judged lost: a running job is taken back only when
its attempt is provably over (api_client/infra/liveness.py), and a new attempt
shows none of a superseded attempt's figures.

Each test writes the rows a starved or dead worker leaves (a stale
heartbeat, a job process that advances or does not, one that is gone) and
runs the reconciler's own step on them; the job process of the pulse test
is a real forked process."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from api_client.config import Settings
from api_client.infra import lifecycle, liveness
from api_client.infra.db import Job, JobState, jobs, workers
from api_client.infra.db.models import Worker, utcnow
from tests.test_db import make_job

JOB_ID = "abc123def456"
TIMEOUT = 6


@pytest.fixture
def settings(migrated_db, redis_url, monkeypatch, tmp_path):
    monkeypatch.setenv("QFARM_HOME", str(tmp_path / "home"))
    return dataclasses.replace(Settings.from_env(), database_url=migrated_db.url, broker_url=redis_url,
                               heartbeat_timeout_s=TIMEOUT)


def running_job(db, *, heartbeat_age: float, progress_age: float | None, process: str | None,
                progress_cpu_s: float | None = None, worker="cpu-1@elsewhere"):
    """A job running as attempt 1 on `worker`, whose last heartbeat is
    `heartbeat_age` seconds old and whose job process last advanced
    `progress_age` seconds ago."""
    now = utcnow()
    jobs.create(db, make_job(JOB_ID))
    jobs.transition(db, JOB_ID, expect=[JobState.QUEUED], state=JobState.RUNNING, stage="quantizing",
                    attempts=1, worker=worker, process=process, progress_cpu_s=progress_cpu_s,
                    progress_at=None if progress_age is None else now - timedelta(seconds=progress_age))
    workers.heartbeat(db, workers.Beat(name=worker, host=worker.split("@")[1], pid=1, gpu_index=None, gpu_name="cpu",
                                       gpu_total_bytes=None, gpu_free_bytes=None, queues=["q"], current_job=JOB_ID,
                                       jobs_done=0))
    with db.session() as s:
        row = s.get(Worker, worker)
        row.heartbeat_at = now - timedelta(seconds=heartbeat_age)
    # The job's own last change happened before the heartbeat went quiet.
    with db.session() as s:
        s.get(Job, JOB_ID).updated_at = now - timedelta(seconds=heartbeat_age + 1)


def reconcile_once(db, settings):
    from worker import reconcile

    reconcile._lost_running(db, settings, farm=jobs.farm_id(db))
    return jobs.get(db, JOB_ID), [e.message or "" for e in jobs.events(db, JOB_ID)]


def a_process_of_another_host():
    return f"{'0' * 8}-0000-0000-0000-{'0' * 12}:4026531836:4242:1000"


def test_a_starved_worker_keeps_its_job_while_the_job_process_advances(migrated_db, settings):
    # Heartbeat 4 timeouts old; the job process (on another host) advanced 1 s ago.
    running_job(migrated_db, heartbeat_age=4 * TIMEOUT, progress_age=1, process=a_process_of_another_host())
    job, events = reconcile_once(migrated_db, settings)
    assert job.state == "running" and job.attempts == 1
    assert not any("worker lost" in m for m in events)


def test_a_job_process_silent_under_its_live_worker_is_never_taken_back(migrated_db, settings):
    """Its process spent no CPU for ten timeouts (blocked in a long C call, a
    hung download), but its worker's heartbeat is current and names it: the
    worker still holds it, so it stays (its time limit ends a true hang);
    taking it back would run it twice."""
    running_job(migrated_db, heartbeat_age=0, progress_age=10 * TIMEOUT, process=a_process_of_another_host())
    job, events = reconcile_once(migrated_db, settings)
    assert job.state == "running" and job.attempts == 1
    assert not any("worker lost" in m for m in events)


def test_a_worker_whose_heartbeat_and_job_both_stopped_is_lost(migrated_db, settings):
    running_job(migrated_db, heartbeat_age=4 * TIMEOUT, progress_age=2 * TIMEOUT, process=a_process_of_another_host())
    job, events = reconcile_once(migrated_db, settings)
    assert job.state == "queued"
    assert any(m.startswith("worker lost: no heartbeat from cpu-1@elsewhere for 24 s, and its job process stopped "
                            "advancing; handed to the next worker as attempt 2") for m in events), events


def test_on_its_host_a_job_process_that_computes_is_never_taken_back(migrated_db, settings):
    """Its pulse thread could not write (progress_at is old), but this host
    reads the process's CPU time itself: past the pulse's last figure."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        key = liveness.process_key(burner.pid)
        deadline = time.monotonic() + 60
        while (liveness.cpu_seconds(key) or 0) < 1.0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        running_job(migrated_db, heartbeat_age=4 * TIMEOUT, progress_age=3 * TIMEOUT, process=key, progress_cpu_s=0.0,
                    worker="cpu-1@here")
        job, _ = reconcile_once(migrated_db, settings)
        assert job.state == "running"
    finally:
        burner.kill()
        burner.wait()
    # The same process, gone: provably lost, however recent its pulse.
    with migrated_db.session() as s:
        s.get(Job, JOB_ID).progress_at = utcnow()
    job, events = reconcile_once(migrated_db, settings)
    assert job.state == "queued"
    assert any(m.startswith("worker lost: no heartbeat from cpu-1@here for ") and "its job process is gone from this host"
               in m for m in events), events


def test_a_new_attempt_shows_none_of_the_superseded_attempt_s_figures(migrated_db, settings):
    running_job(migrated_db, heartbeat_age=4 * TIMEOUT, progress_age=None, process=None)
    jobs.record(migrated_db, JOB_ID, attempt=1, ppl_baseline=20.0, ppl_quantized=21.0, ppl_ratio=1.05,
                quantize_seconds=30.0, metrics={"tasks": {"x": 1}}, peak_rss_bytes=123)
    assert lifecycle.hand_back(migrated_db, jobs.get(migrated_db, JOB_ID), "worker lost: test", settings, "farm")
    shown = jobs.to_dict(jobs.get(migrated_db, JOB_ID))
    assert shown["state"] == "queued"
    assert [k for k in ("ppl_baseline", "ppl_quantized", "ppl_ratio", "quantize_seconds", "metrics", "peak_rss_bytes")
            if shown[k] is not None] == []
    # The superseded attempt, still running somewhere, can no longer write its figures.
    assert jobs.record(migrated_db, JOB_ID, attempt=1, ppl_ratio=1.05) is False
    assert jobs.get(migrated_db, JOB_ID).ppl_ratio is None


@pytest.mark.parametrize("max_attempts,then", [(3, "queued"), (1, "failed")], ids=["handed back", "given up"])
def test_a_superseded_job_process_stops_itself(migrated_db, settings, max_attempts, then):
    """A real job process with its pulse: it says it advances while it
    computes, and once its worker was judged lost (while this process was
    stopped) it stops itself, whether the job was handed back or, at its
    last attempt, failed as given up."""
    import os
    import signal
    import threading

    from worker import job_process
    from worker.pulse import Pulse

    settings = dataclasses.replace(settings, max_attempts=max_attempts)
    jobs.create(migrated_db, make_job(JOB_ID))
    jobs.transition(migrated_db, JOB_ID, expect=[JobState.QUEUED], state=JobState.RUNNING, attempts=1,
                    worker="w@h")

    def job() -> int:
        with Pulse(settings.database_url, JOB_ID, attempt=1, interval_s=0.2):
            end = time.monotonic() + 60
            while time.monotonic() < end:
                sum(range(10_000))  # computing
        return 0

    # When the pulse first wrote, and when the job was handed back (seconds
    # after the job process started): a failure says which step it missed.
    seen: dict[str, float] = {}
    start = time.monotonic()

    def handed_back() -> None:
        while jobs.get(migrated_db, JOB_ID).progress_at is None:
            if time.monotonic() - start > 60:
                return
            time.sleep(0.1)
        seen["pulse"] = time.monotonic() - start
        lifecycle.hand_back(migrated_db, jobs.get(migrated_db, JOB_ID), "worker lost: test", settings, "farm")
        seen["handed back"] = time.monotonic() - start

    t = threading.Thread(target=handed_back)
    t.start()
    ended = job_process.run(job, {signal.SIGTERM: lambda *_: os._exit(9)})
    t.join()
    seen["ended"] = time.monotonic() - start
    assert "pulse" in seen, f"the pulse never said the job advances: {seen}"
    assert jobs.get(migrated_db, JOB_ID).state == then
    # Stopped by its own pulse, well before the minute of work was done.
    assert ended.code == 9, (ended, seen)


def test_a_job_process_that_ends_its_job_itself_is_not_stopped_by_its_pulse(migrated_db, settings):
    """The runner tells the pulse before it records the job's end (here a
    failure, as Run.fail does): the pulse's next look finds the job failed
    as this attempt and must not take that for a reconciler's doing."""
    import os
    import signal

    from worker import job_process
    from worker.pulse import Pulse

    jobs.create(migrated_db, make_job(JOB_ID))
    jobs.transition(migrated_db, JOB_ID, expect=[JobState.QUEUED], state=JobState.RUNNING, attempts=1,
                    worker="w@h")

    def job() -> int:
        from api_client.infra.db import Database

        db = Database(settings.database_url, pooled=False)
        with Pulse(settings.database_url, JOB_ID, attempt=1, interval_s=0.1) as pulse:
            while jobs.get(db, JOB_ID).progress_at is None:
                sum(range(10_000))
            pulse.finishing()
            jobs.transition(db, JOB_ID, expect=[JobState.RUNNING], expect_attempts=1, state=JobState.FAILED,
                            message="failed here", error="failed here")
            end = time.monotonic() + 1.5  # the rest of the run's wind-down: many of the pulse's intervals
            while time.monotonic() < end:
                sum(range(10_000))
        db.dispose()
        return 0

    ended = job_process.run(job, {signal.SIGTERM: lambda *_: os._exit(9)})
    assert ended.code == 0, ended
    assert jobs.get(migrated_db, JOB_ID).state == "failed"


def test_a_slow_reconcile_never_holds_up_the_heartbeat(migrated_db, settings, monkeypatch):
    """The reconciler's Redis, S3 and database calls can take long; the
    beat is written on time meanwhile."""
    import threading

    from worker import heartbeat, reconcile

    stuck, release = threading.Event(), threading.Event()

    def slow_reconcile(*_args, **_kwargs):
        stuck.set()
        release.wait(60)

    monkeypatch.setattr(reconcile, "reconcile", slow_reconcile)
    beat = heartbeat.Heartbeat("cpu-1@here", dataclasses.replace(settings, heartbeat_timeout_s=3))  # a beat every 0.5 s
    beat.start()
    try:
        assert stuck.wait(30), "the reconciler never ran"
        time.sleep(3)  # six beats' time, with the reconciler stuck throughout
        row = workers.get(migrated_db, "cpu-1@here")
        assert row is not None and (utcnow() - jobs.aware(row.heartbeat_at)).total_seconds() < 1.5
    finally:
        release.set()
        beat.stop()
