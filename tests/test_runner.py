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
