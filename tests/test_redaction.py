"""Nothing secret is stored or shown: every error text, event, metric,
manifest, worker log line and CLI error passes one redaction
(api_client/redaction.py). The secrets are the ones conftest plants in the
environment for the whole session (and looks for in everything the suite
wrote at its end)."""

import io
import json
import logging
import os
import subprocess

import pytest

from api_client.app import artifacts
from api_client.infra.db import Job, JobState, jobs
from api_client.infra.storage import open_store
from api_client.redaction import MASK, redact
from tests.support.cli import invoke
from tests.support.secrets import CANARIES, leaked_names


def secret() -> str:
    return CANARIES["QFARM_CANARY_SECRET"]


def test_redact_masks_secrets_of_every_shape_and_leaves_ordinary_text():
    # What a process started now holds (this one's /proc/self/environ is
    # the environment it started with, before conftest planted them).
    environ = subprocess.run(["cat", "/proc/self/environ"], capture_output=True, check=True).stdout.decode()
    assert leaked_names(environ)
    assert leaked_names(redact(environ)) == []
    aws = CANARIES["QFARM_CANARY_AWS_SECRET_ACCESS_KEY"]
    text = (f"connect to postgresql://qfarm:hunter2@db:5432/farm failed; aws said {aws}; "
            f"PGPASSWORD=hunter2 api_key: 'abc123xyz' Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc "
            f"token hf_{'a' * 34} key AKIAIOSFODNN7EXAMPLE")
    out = redact(text)
    for s in ("hunter2", aws, "abc123xyz", "eyJhbGci", "hf_aaaa", "AKIAIOSFODNN7EXAMPLE"):
        assert s not in out, out
    assert "postgresql://***@db:5432/farm" in out and "PGPASSWORD=***" in out
    ordinary = ("max_tokens=64 tokenizer: tokenizer.json perplexity 12.5 → 12.7 (×1.0160) key: inputs/x/calib.txt "
                "no hub token: set HF_TOKEN")
    assert redact(ordinary) == ordinary


def test_job_rows_and_events_are_redacted_whatever_the_writer(migrated_db):
    db = migrated_db
    job = Job(id="redact000001", state=JobState.QUEUED.value, method="rtn", format="compressed-tensors", params={},
              model="/m", eval={}, queue="q", submitted_by="ann", attempts=0, weights="auto")
    jobs.create(db, job, message=f"submitted ({secret()})")
    jobs.transition(db, job.id, expect=[JobState.QUEUED], state=JobState.RUNNING, message=f"started {secret()}")
    jobs.note(db, job.id, f"env says {secret()}")
    jobs.record(db, job.id, metrics={"tasks_error": f"data_files read QFARM_CANARY_SECRET={secret()}",
                                     "nested": [{"x": secret()}]})
    jobs.transition(db, job.id, expect=[JobState.RUNNING], state=JobState.FAILED, message=f"failed: {secret()}",
                    error=f"ValueError: {secret()}", error_traceback=f"Traceback ...\n  {secret()}\n")
    row = jobs.get(db, job.id)
    stored = json.dumps(jobs.to_dict(row), default=str) + json.dumps([jobs.event_dict(e) for e in jobs.events(db, job.id)])
    assert leaked_names(stored) == []
    assert row.error == f"ValueError: {MASK}" and row.metrics["nested"] == [{"x": MASK}]
    assert row.error_traceback is not None and MASK in row.error_traceback


def test_the_manifest_is_redacted(tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "config.json").write_text("{}")
    upload = artifacts.Upload(store, "redact000002", out)
    upload.finish({"metrics": {"tasks_error": f"read {secret()}"}, "job": {"calib": {"source": "builtin"}}})
    manifest = store.get_bytes("jobs/redact000002/manifest.json").decode()
    assert leaked_names(manifest) == [] and MASK in manifest
    assert json.loads(manifest)["files"][0]["path"] == "config.json"


def test_the_worker_log_is_redacted(capsys):
    """The worker's own set-up (worker/app.py): every handler of the root
    logger redacts, tracebacks included; loguru's lines too."""
    from worker import app, logs

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        app._quiet_logs()
        log = logging.getLogger("qfarm.worker")
        log.error("job x failed: %s", secret())
        try:
            raise ValueError(f"library said HF_TOKEN={CANARIES['QFARM_CANARY_HF_TOKEN']}")
        except ValueError:
            log.exception("job y failed")
    finally:
        root.removeHandler(handler)
    written = stream.getvalue()
    assert "job x failed: ***" in written and "ValueError: library said HF_TOKEN=***" in written
    assert leaked_names(written) == []

    logs.quiet_loguru()
    from loguru import logger

    logger.warning(f"llm-compressor saw {secret()}")
    assert "llm-compressor saw ***" in capsys.readouterr().err


def test_cli_errors_are_redacted(qfarm_env):
    invoke("db", "upgrade", check=True)
    shown = invoke("status", secret())
    assert shown.returncode != 0 and "no job '***'" in shown.stderr
    down = invoke("list", env={**os.environ, "QFARM_DATABASE_URL": CANARIES["QFARM_CANARY_DATABASE_URL"]})
    assert down.returncode != 0 and "://qfarm:***@127.0.0.1:1/qfarm" in down.stderr
    assert leaked_names(shown.stdout + shown.stderr + down.stdout + down.stderr) == []


@pytest.mark.parametrize("name", ["QFARM_CANARY_SECRET", "QFARM_CANARY_HF_TOKEN"])
def test_the_planted_secrets_are_in_the_environment(name):
    """The session-wide check (conftest) means something only while the
    secrets are planted in every process the suite starts."""
    assert os.environ[name] == CANARIES[name]


@pytest.mark.parametrize("where", ["model", "calib"])
def test_a_source_holding_a_secret_is_refused_at_submit_not_stored(where, qfarm_env, redis_conn, tiny_model, tmp_path):
    """A source is stored in the job's row and shown by `list` and `status`:
    a hub token in a model's path, or a secret's value in a text's name, is
    refused in one line (masked), and nothing is queued."""
    import shutil

    from api_client.infra.db import Database

    invoke("db", "upgrade", check=True)
    token = CANARIES["QFARM_CANARY_HF_TOKEN"]
    model = shutil.copytree(tiny_model, tmp_path / f"model-{token}")
    calib = tmp_path / f"calib-{secret()}.txt"
    calib.write_text("It was a bright cold day in April, and the clocks were striking thirteen. " * 50)
    args = [str(model), "--method", "rtn"] if where == "model" else [str(tiny_model), "--method", "gptq", "--calib", str(calib)]
    out = invoke("submit", *args)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "holds credentials or a secret" in out.stderr
    assert "***" in out.stderr and leaked_names(out.stderr) == []
    db = Database(os.environ["QFARM_DATABASE_URL"])
    assert jobs.list_jobs(db) == [] and list(redis_conn.keys("qfarm*")) == []
    db.dispose()
