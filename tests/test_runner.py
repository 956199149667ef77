"""A consumed message is never acknowledged before its job row is known
good: a worker that finds the database at another schema (downgraded under
it) or cannot read the row gives the message back; nothing is dropped."""

from __future__ import annotations

import dataclasses

import pytest
from alembic import command

from api_client.config import Settings
from api_client.infra.db import Database, jobs
from api_client.infra.db.database import alembic_config
from tests.test_db import make_job

JOB_ID = "abc123def456"


@pytest.fixture
def downgraded(sqlite_url, monkeypatch, tmp_path):
    """A queued job, then the schema downgraded one step under the worker."""
    monkeypatch.setenv("QFARM_HOME", str(tmp_path / "home"))
    db = Database(sqlite_url)
    db.upgrade()
    jobs.create(db, make_job(JOB_ID))
    db.dispose()
    command.downgrade(alembic_config(sqlite_url), "-1")
    return dataclasses.replace(Settings.from_env(), database_url=sqlite_url, db_retry_s=1)


def _job_row(settings):
    # Read at the schema the worker found, after `qfarm db upgrade`.
    Database(settings.database_url).upgrade()
    with_db = Database(settings.database_url)
    try:
        return jobs.get(with_db, JOB_ID), [e.message for e in jobs.events(with_db, JOB_ID)]
    finally:
        with_db.dispose()


def test_a_worker_gives_the_message_back_when_the_schema_was_downgraded(downgraded):
    from worker import runner

    assert runner.execute(JOB_ID, downgraded, worker="w1@host") is runner.Outcome.GIVE_BACK
    job, events = _job_row(downgraded)
    assert job.state == "queued" and job.attempts == 0 and events == ["submitted"]


def test_a_job_process_that_died_before_its_claim_gives_the_message_back(sqlite_url, monkeypatch, tmp_path):
    from worker import runner

    monkeypatch.setenv("QFARM_HOME", str(tmp_path / "home"))
    db = Database(sqlite_url)
    db.upgrade()
    jobs.create(db, make_job(JOB_ID))
    db.dispose()
    settings = dataclasses.replace(Settings.from_env(), database_url=sqlite_url)
    lost = runner.process_lost(JOB_ID, settings, "w1@host", None, "its job process (123) was killed by SIGKILL")
    assert lost is runner.Outcome.GIVE_BACK


def test_the_task_rejects_the_message_for_the_broker_to_redeliver(downgraded, monkeypatch):
    """The Celery task itself, through its forked job process: it raises
    Reject(requeue=True), never returning (which would acknowledge)."""
    from celery.exceptions import Reject

    from worker import tasks

    monkeypatch.setenv("QFARM_DATABASE_URL", downgraded.database_url)
    monkeypatch.setenv("QFARM_DB_RETRY_S", "1")
    monkeypatch.setattr(tasks, "GIVE_BACK_PAUSE_S", 0, raising=False)
    with pytest.raises(Reject) as rejected:
        tasks.run_job(JOB_ID)
    assert rejected.value.requeue is True
    job, _ = _job_row(downgraded)
    assert job.state == "queued" and job.attempts == 0


def test_a_full_disk_is_named_as_such_in_the_job_s_error(tmp_path):
    """Real faults: a write to /dev/full (ENOSPC) and SQLite out of pages
    (SQLITE_FULL, through SQLAlchemy, as a farm on one machine meets a full
    disk first), also when a library wraps them; other errors keep their words."""
    import sqlalchemy

    from worker import runner
    from worker.gpu import Device

    cpu = Device("cpu", None, "cpu")
    with pytest.raises(OSError) as written, open("/dev/full", "wb") as disk:
        disk.write(b"weights")
        disk.flush()
    assert runner.failure_message(written.value, cpu, None).startswith(
        "the worker's disk is full: OSError: [Errno 28] No space left on device")
    try:
        raise RuntimeError("saving the artifact failed") from written.value
    except RuntimeError as wrapped:
        assert runner.failure_message(wrapped, cpu, None).startswith("the worker's disk is full: OSError: [Errno 28]")

    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'qfarm.db'}")
    with pytest.raises(sqlalchemy.exc.OperationalError) as recorded, engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE figures (metrics BLOB)")
        conn.exec_driver_sql("PRAGMA max_page_count = 4")
        conn.exec_driver_sql("INSERT INTO figures VALUES (zeroblob(100000))")
    engine.dispose()
    assert "sqlalche.me" in str(recorded.value)  # what the job said before
    assert runner.failure_message(recorded.value, cpu, None) == (
        "the worker's disk is full: OperationalError: database or disk is full")

    assert runner.failure_message(ValueError("bad shape"), cpu, None) == "ValueError: bad shape"
