"""The SQL record, on PostgreSQL and on SQLite."""

import pytest
from sqlalchemy import inspect

from api_client.errors import JobNotFound, ServiceUnavailable, SpecError
from api_client.infra.db import Database, Job, JobState, jobs


def make_job(job_id="abc123def456", **kw):
    fields = dict(id=job_id, state="queued", method="gptq", format="compressed-tensors", params={"bits": 4},
                  model="/m", calib=None, eval={"source": "builtin"}, weights="auto", queue="qfarm",
                  submitted_by="ann", attempts=0)
    fields.update(kw)
    return Job(**fields)


def test_upgrade_creates_the_schema_and_check_passes(db_url):
    db = Database(db_url)
    with pytest.raises(ServiceUnavailable, match="has no qfarm tables: run `qfarm db upgrade`"):
        db.check()
    db.upgrade()
    db.check()
    tables = set(inspect(db.engine).get_table_names())
    assert {"jobs", "job_events", "alembic_version"} <= tables
    db.upgrade()  # idempotent
    db.dispose()


def test_unreachable_database_is_one_line():
    db = Database("postgresql://nobody:secret@127.0.0.1:1/none")
    with pytest.raises(ServiceUnavailable) as err:
        db.check()
    msg = str(err.value)
    assert msg.startswith("cannot reach the database at postgresql+psycopg://nobody:***@127.0.0.1:1/none")
    assert "secret" not in msg and "\n" not in msg


def test_create_get_by_prefix_and_list(migrated_db):
    jobs.create(migrated_db, make_job("aaaa11112222"))
    jobs.create(migrated_db, make_job("aaaa33334444", submitted_by="bob"))
    jobs.create(migrated_db, make_job("bbbb55556666", state="failed"))
    assert jobs.get(migrated_db, "bbbb").id == "bbbb55556666"
    with pytest.raises(SpecError, match="ambiguous"):
        jobs.get(migrated_db, "aaaa")
    with pytest.raises(JobNotFound):
        jobs.get(migrated_db, "cccc")
    with pytest.raises(SpecError, match="give at least 4 characters of a job id, not 'a'"):
        jobs.get(migrated_db, "a")  # too short to be a prefix
    with pytest.raises(SpecError, match="it starts aaaa33334444, aaaa11112222|it starts aaaa11112222, aaaa33334444"):
        jobs.get(migrated_db, "aaaa")
    assert {j.id for j in jobs.list_jobs(migrated_db, state="queued")} == {"aaaa11112222", "aaaa33334444"}
    assert [j.id for j in jobs.list_jobs(migrated_db, user="bob")] == ["aaaa33334444"]
    got = jobs.get(migrated_db, "aaaa11112222")
    assert got.params == {"bits": 4} and got.created_at is not None


def test_transitions_are_conditional_and_each_one_is_an_event(migrated_db):
    jobs.create(migrated_db, make_job())
    jid = "abc123def456"
    assert jobs.transition(migrated_db, jid, expect=[JobState.QUEUED], state=JobState.RUNNING, attempts=1, worker="gpu0@h")
    assert jobs.transition(migrated_db, jid, expect=[JobState.RUNNING], state=JobState.RUNNING, stage="loading")
    assert jobs.transition(migrated_db, jid, expect=[JobState.QUEUED, JobState.RUNNING], state=JobState.CANCELLED)
    # A worker still holding the job cannot move it on once it was cancelled.
    assert not jobs.transition(migrated_db, jid, expect=[JobState.RUNNING], state=JobState.RUNNING, stage="quantizing")
    assert not jobs.transition(migrated_db, jid, expect=[JobState.RUNNING], state=JobState.SUCCEEDED)
    job = jobs.get(migrated_db, jid)
    assert job.state == "cancelled" and job.finished_at is not None and job.worker == "gpu0@h"
    evs = jobs.events(migrated_db, jid)
    assert [(e.state, e.stage) for e in evs] == [("queued", None), ("running", None), ("running", "loading"), ("cancelled", None)]
    assert all(a.at <= b.at for a, b in zip(evs, evs[1:], strict=False))
    assert [e.id for e in jobs.events(migrated_db, jid, after_id=evs[1].id)] == [e.id for e in evs[2:]]


def test_attempt_guard(migrated_db):
    jobs.create(migrated_db, make_job(state="running", attempts=1))
    assert not jobs.transition(migrated_db, "abc123def456", expect=[JobState.RUNNING], expect_attempts=2, state=JobState.RUNNING)
    assert jobs.transition(migrated_db, "abc123def456", expect=[JobState.RUNNING], expect_attempts=1, state=JobState.RUNNING, attempts=2)


def test_status_dict_has_the_documented_fields(migrated_db):
    jobs.create(migrated_db, make_job())
    d = jobs.to_dict(jobs.get(migrated_db, "abc123def456"))
    for key in ("id", "state", "stage", "method", "params", "model", "submitted_by", "created_at", "started_at",
                "finished_at", "worker", "gpu_index", "gpu_name", "peak_vram_bytes", "artifact_bytes", "ppl_baseline",
                "ppl_quantized", "ppl_ratio", "artifact_uri", "error"):
        assert key in d
    assert d["created_at"].endswith("+00:00")
