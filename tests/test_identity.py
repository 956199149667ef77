"""Who you are: on PostgreSQL the user is the database role the client
connected as, never QFARM_USER, and cancelling or requeueing another user's
job needs the qfarm_admin role, which the database enforces too (row-level
security, migration 0006); workers, connecting as their own role, do all
they need. SQLite (one machine) keeps QFARM_USER, on the honour system.

The PostgreSQL tests make real login roles with unique names in the test
cluster (trust authentication) and drop them afterwards."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid

import psycopg
import pytest
from sqlalchemy.engine import make_url

from api_client.config import Settings
from api_client.infra.db import Database, jobs, workers
from api_client.infra.db.database import head_revision
from tests.support.cli import invoke
from tests.support.services import PG_ADMIN_URL

JOB = ["--method", "rtn"]


@pytest.fixture
def team(pg_url, qfarm_env, redis_conn):
    """A migrated farm database and four login roles: alice and bob (users),
    an admin, and a worker. Yields the URL each connects with."""
    Database(pg_url).upgrade()
    tag = uuid.uuid4().hex[:8]
    names = {"alice": f"qf_alice_{tag}", "bob": f"qf_bob_{tag}", "admin": f"qf_admin_{tag}", "worker": f"qf_worker_{tag}"}
    groups = {"alice": "qfarm_user", "bob": "qfarm_user", "admin": "qfarm_admin", "worker": "qfarm_worker"}
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        for who, role in names.items():
            conn.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE {groups[who]}')
    urls = {who: make_url(pg_url).set(username=role).render_as_string(hide_password=False) for who, role in names.items()}
    try:
        yield names, urls
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            for role in names.values():
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def as_(url: str, **extra: str) -> dict:
    return {**os.environ, "QFARM_DATABASE_URL": url, **extra}


def test_postgres_users_are_their_roles_and_only_an_admin_acts_on_another_s_job(team, tiny_model):
    names, urls = team
    alice, bob, admin = names["alice"], names["bob"], names["admin"]
    # QFARM_USER says nothing on PostgreSQL: the job is alice's role's.
    job_id = invoke("submit", str(tiny_model), *JOB, env=as_(urls["alice"], QFARM_USER="mallory"), check=True).stdout.strip()
    db = Database(urls["alice"])
    assert jobs.get(db, job_id).submitted_by == alice
    assert [e.message for e in jobs.events(db, job_id)] == [f"submitted by {alice}"]

    # bob, claiming to be alice, with --force: refused in one line; nothing changed.
    for verb in ("cancel", "requeue"):
        refused = invoke(verb, job_id, *(["--force"] if verb == "cancel" else []), env=as_(urls["bob"], QFARM_USER=alice))
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1
        assert refused.stderr == (f"error: job {job_id} was submitted by {alice}, not {bob}: to {verb} another user's "
                                  f"job the role {bob} needs qfarm_admin (GRANT qfarm_admin TO {bob})\n")
    # Nor can bob do it behind the client's back: the database refuses his writes.
    with psycopg.connect(urls["bob"], autocommit=True) as conn:
        assert conn.execute("UPDATE jobs SET state = 'cancelled' WHERE id = %s", (job_id,)).rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO job_events (job_id, at, state, message) VALUES (%s, now(), 'queued', %s)",
                         (job_id, f"cancelled by {alice}"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO workers (name, host, pid, queues, started_at, heartbeat_at, jobs_done) "
                         "VALUES ('fake', 'h', 1, '[]', now(), now(), 0)")
    assert jobs.get(db, job_id).state == "queued"
    assert len(jobs.events(db, job_id)) == 1

    # The admin may, with --force; the event names the admin's role.
    done = invoke("cancel", job_id, "--force", env=as_(urls["admin"], QFARM_USER=alice), check=True)
    assert done.stdout.strip() == f"{job_id} cancelled"
    assert jobs.get(db, job_id).state == "cancelled"
    assert jobs.events(db, job_id)[-1].message == f"cancelled by {admin} (--force; submitted by {alice})"
    # alice cancels her own job without --force.
    own = invoke("submit", str(tiny_model), *JOB, env=as_(urls["alice"]), check=True).stdout.strip()
    invoke("cancel", own, env=as_(urls["alice"]), check=True)
    assert jobs.events(db, own)[-1].message == f"cancelled by {alice}"
    db.dispose()


def test_a_worker_connecting_as_its_own_role_does_everything_a_job_needs(team, monkeypatch, tmp_path):
    """The worker's every database write, as the worker role, on a job
    another role submitted: heartbeat, claim, stages, figures, progress,
    notes, the end; handing back and failing a lost worker's job."""
    from api_client.infra import lifecycle
    from worker import reconcile, runner
    from worker.gpu import Identity

    names, urls = team
    alice_db = Database(urls["alice"])
    for job_id in ("aaaa00000001", "aaaa00000002"):
        jobs.create(alice_db, jobs.Job(id=job_id, state="queued", method="rtn", format="compressed-tensors", params={},
                                       model="/m", eval={}, weights="auto", queue="q", submitted_by=names["alice"],
                                       attempts=0))
    settings = dataclasses.replace(Settings.from_env(), database_url=urls["worker"], heartbeat_timeout_s=2)
    db = Database(urls["worker"])
    db.check()
    rec = runner.Recorder(db, retry_s=0)
    workers.heartbeat(db, workers.Beat(name="cpu-1@h", host="h", pid=os.getpid(), gpu_index=None, gpu_name="cpu",
                                       gpu_total_bytes=None, gpu_free_bytes=None, queues=["q"],
                                       current_job="aaaa00000001", jobs_done=0))
    job = runner.claim(rec, "aaaa00000001", "cpu-1@h", Identity(None, "cpu"), settings)
    assert job is not None and job.attempts == 1 and job.process
    assert jobs.transition(db, job.id, expect=[jobs.JobState.RUNNING], expect_attempts=1, state=jobs.JobState.RUNNING,
                           stage="quantizing")
    assert jobs.record(db, job.id, attempt=1, ppl_ratio=1.01) and jobs.progressed(db, job.id, 1, 3.0)
    jobs.note(db, job.id, "model cache miss")
    assert jobs.transition(db, job.id, expect=[jobs.JobState.RUNNING], expect_attempts=1, state=jobs.JobState.SUCCEEDED,
                           artifact_uri="file:///a")
    # A lost worker's job: the reconciler, as the worker role, hands it back.
    lost = runner.claim(rec, "aaaa00000002", "cpu-9@gone", Identity(None, "cpu"), settings)
    assert lost is not None
    with alice_db.session() as s:  # its process on another host, long silent
        row = s.get(jobs.Job, lost.id)
        row.process, row.updated_at = "0-0:1:1:1", row.updated_at.replace(year=2000)
    assert lifecycle.hand_back(db, jobs.get(db, lost.id), "worker lost: test", settings, "farm")
    reconcile.reconcile(db, settings, jobs.farm_id(db))
    assert workers.forget_older_than(db, days=7) == 0
    assert jobs.get(db, "aaaa00000001").state == "succeeded" and jobs.get(db, lost.id).state == "queued"
    db.dispose()
    alice_db.dispose()


def test_a_role_without_qfarm_rights_is_told_what_to_grant(pg_url, qfarm_env):
    Database(pg_url).upgrade()
    role = f"qf_nobody_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        url = make_url(pg_url).set(username=role).render_as_string(hide_password=False)
        out = invoke("list", env=as_(url))
        assert out.returncode == 2 and out.stderr.count("\n") == 1
        assert out.stderr.startswith(f"error: the database role {role} may not use qfarm's tables at ")
        assert out.stderr.endswith(f"an administrator grants it (GRANT qfarm_user TO {role})\n")
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_sqlite_keeps_qfarm_user_on_the_honour_system(qfarm_env, redis_conn, tiny_model):
    """(Moved from the fault suite, whose PostgreSQL now records roles.)"""
    Database(os.environ["QFARM_DATABASE_URL"]).upgrade()
    job_id = invoke("submit", str(tiny_model), *JOB, env=as_(os.environ["QFARM_DATABASE_URL"], QFARM_USER="ann"),
                    check=True).stdout.strip()
    proc = invoke("cancel", job_id, env=as_(os.environ["QFARM_DATABASE_URL"], QFARM_USER="mallory"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: job {job_id} was submitted by ann, not mallory: "
                                   f"pass --force to cancel another user's job")
    invoke("cancel", job_id, "--force", env=as_(os.environ["QFARM_DATABASE_URL"], QFARM_USER="mallory"), check=True)
    db = Database(os.environ["QFARM_DATABASE_URL"])
    assert jobs.get(db, job_id).state == "cancelled"
    assert jobs.events(db, job_id)[-1].message == "cancelled by mallory (--force; submitted by ann)"
    db.dispose()


def test_a_user_role_does_everything_a_user_does_on_its_own_jobs(team, tiny_model, tmp_path):
    """alice, a plain qfarm_user, on PostgreSQL: submit, list, status, requeue
    (a message again), compare, cancel, and, once a worker role ran her job,
    watch and download it: every write the client makes passes row security."""
    from api_client.app import artifacts
    from api_client.infra.storage import open_store
    from worker import runner
    from worker.gpu import Identity

    names, urls = team
    alice = names["alice"]
    env = as_(urls["alice"])
    job_id = invoke("submit", str(tiny_model), *JOB, env=env, check=True).stdout.strip()
    listed = json.loads(invoke("list", "--mine", "--json", env=env, check=True).stdout)
    assert [j["id"] for j in listed] == [job_id] and listed[0]["submitted_by"] == alice
    assert json.loads(invoke("status", job_id, "--json", env=env, check=True).stdout)["state"] == "queued"
    assert invoke("requeue", job_id, env=env, check=True).stdout.startswith(f"{job_id} queued on ")

    group = json.loads(invoke("compare", str(tiny_model), "--methods", "rtn,int8", "--json", env=env, check=True).stdout)
    members = [j["id"] for j in group["jobs"]]
    assert len(members) == 2
    for member in members:
        assert invoke("cancel", member, env=env, check=True).stdout.strip() == f"{member} cancelled"
    assert "cancelled" in invoke("status", group["group"], env=env, check=True).stdout

    # A worker role runs alice's job (claim, an artifact, the end).
    settings = dataclasses.replace(Settings.from_env(), database_url=urls["worker"])
    db = Database(urls["worker"])
    claimed = runner.claim(runner.Recorder(db, retry_s=0), job_id, "cpu-1@h", Identity(None, "cpu"), settings)
    assert claimed is not None
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"weights")
    uri = artifacts.publish(open_store(settings.storage_url), job_id, tmp_path / "out", {"job": job_id})
    assert jobs.transition(db, job_id, expect=[jobs.JobState.RUNNING], expect_attempts=1,
                           state=jobs.JobState.SUCCEEDED, artifact_uri=uri)
    db.dispose()

    watched = invoke("watch", job_id, env=env)
    assert watched.returncode == 0 and watched.stdout.rstrip().endswith("succeeded")
    invoke("download", job_id, str(tmp_path / "got"), env=env, check=True)
    assert (tmp_path / "got" / "model.safetensors").read_bytes() == b"weights"


def test_a_temporary_table_named_like_the_catalogue_passes_no_row_security(team):
    """A session's temporary tables come first in its search path, before
    pg_catalog: bob's own `pg_roles` (and `pg_class`, `jobs`) saying he is a
    superuser must not make the database take him for an administrator."""
    names, urls = team
    alice_db = Database(urls["alice"])
    jobs.create(alice_db, jobs.Job(id="aaaa00000001", state="queued", method="rtn", format="compressed-tensors",
                                   params={}, model="/m", eval={}, weights="auto", queue="q",
                                   submitted_by=names["alice"], attempts=0))
    with psycopg.connect(urls["bob"], autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE pg_roles (rolname name, rolsuper bool, rolbypassrls bool)")
        conn.execute("INSERT INTO pg_roles VALUES (current_user, true, true)")
        conn.execute("CREATE TEMP TABLE jobs (id text)")  # its owner: bob
        conn.execute("CREATE TEMP TABLE pg_class (oid regclass, relowner oid)")
        conn.execute("INSERT INTO pg_class SELECT 'jobs'::regclass, oid FROM pg_catalog.pg_roles "
                     "WHERE rolname = current_user")
        assert conn.execute("SELECT qfarm_acts_for_all()").fetchone() == (False,)
        assert conn.execute("UPDATE public.jobs SET state = 'cancelled' WHERE id = 'aaaa00000001'").rowcount == 0
        assert conn.execute("DELETE FROM public.jobs WHERE id = 'aaaa00000001'").rowcount == 0
    assert jobs.get(alice_db, "aaaa00000001").state == "queued"
    alice_db.dispose()


def test_db_upgrade_by_a_database_owner_who_may_not_create_roles(tmp_path, qfarm_env):
    """A farm's administrator owns its database but is no superuser and may
    not create roles: where the cluster lacks qfarm's roles, `qfarm db
    upgrade` says in one line what a superuser runs once (only what is
    missing); once run, the administrator's upgrade goes through (CREATE ROLE and GRANT are not
    tried again: PostgreSQL refuses them to such a role even when nothing
    would change)."""
    from tests.support.postgres_server import PrivatePostgres

    with PrivatePostgres(tmp_path / "cluster") as pg:
        with psycopg.connect(pg.url_for("postgres"), autocommit=True) as conn:
            conn.execute("CREATE ROLE farmadmin LOGIN")
            conn.execute("CREATE DATABASE farm OWNER farmadmin")
        env = as_(f"postgresql://farmadmin@{pg.host}:{pg.port}/farm")
        out = invoke("db", "upgrade", env=env)
        make_roles = ("CREATE ROLE qfarm_user NOLOGIN; CREATE ROLE qfarm_admin NOLOGIN IN ROLE qfarm_user; "
                      "CREATE ROLE qfarm_worker NOLOGIN IN ROLE qfarm_user")
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.endswith(": qfarm's roles are missing from this PostgreSQL cluster and the role farmadmin "
                                   f"may not create roles: a superuser runs once per cluster: {make_roles}\n")
        # A superuser who made only some of it: told the rest, and what it
        # says is what to run.
        with psycopg.connect(pg.url_for("postgres"), autocommit=True) as conn:
            conn.execute("CREATE ROLE qfarm_user NOLOGIN")
            conn.execute("CREATE ROLE qfarm_admin NOLOGIN")
        out = invoke("db", "upgrade", env=env)
        rest = "GRANT qfarm_user TO qfarm_admin; CREATE ROLE qfarm_worker NOLOGIN IN ROLE qfarm_user"
        assert out.returncode == 2 and out.stderr.endswith(f"a superuser runs once per cluster: {rest}\n"), out.stderr
        with psycopg.connect(pg.url_for("postgres"), autocommit=True) as conn:
            for statement in rest.split("; "):
                conn.execute(statement)
        done = invoke("db", "upgrade", env=env, check=True)
        assert done.stdout.rstrip().endswith(f"is at schema {head_revision()}")
        with psycopg.connect(pg.url_for("farm"), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM pg_policies WHERE tablename = 'jobs'").fetchone() == (4,)


def test_every_table_and_sequence_of_the_schema_is_granted_to_the_roles(pg_url):
    """A later migration that adds a table must grant it (as 0006 does):
    otherwise a user's or a worker's role meets "permission denied" on it,
    while the owner, who runs the tests' own writes, never would."""
    Database(pg_url).upgrade()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
        sequences = [r[0] for r in conn.execute("SELECT sequencename FROM pg_sequences "
                                                "WHERE schemaname = current_schema()")]
        assert {"jobs", "job_events", "job_groups", "workers", "farm", "alembic_version"} <= set(tables)
        for role in ("qfarm_user", "qfarm_admin", "qfarm_worker"):
            for table in tables:
                assert conn.execute("SELECT has_table_privilege(%s, %s, 'SELECT')", (role, table)).fetchone() == (True,), \
                    f"{role} may not read {table}"
            for sequence in sequences:
                assert conn.execute("SELECT has_sequence_privilege(%s, %s, 'USAGE')",
                                    (role, sequence)).fetchone() == (True,), f"{role} may not use {sequence}"
        # What a worker writes beside the jobs (heartbeats), and no user may.
        for privilege in ("INSERT", "UPDATE", "DELETE"):
            assert conn.execute("SELECT has_table_privilege('qfarm_worker', 'workers', %s)", (privilege,)).fetchone()[0]
            assert not conn.execute("SELECT has_table_privilege('qfarm_user', 'workers', %s)", (privilege,)).fetchone()[0]
