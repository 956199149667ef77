"""The whole path, for real: the `qfarm` CLI → Redis → a `qfarm worker start
--gpus cpu` process (Celery) → quantize → S3 (moto's HTTP server) →
PostgreSQL, checked the way a user would check it. One worker serves the
module; what happens when workers die is tests/test_faults.py's."""


import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from sqlalchemy.engine import make_url
from transformers import AutoModelForCausalLM, AutoTokenizer

from api_client.infra.db import Database, jobs
from api_client.infra.storage.s3 import s3_client
from tests.support.cli import run_cli
from tests.support.services import empty_database

pytestmark = pytest.mark.slow

FAST = ["--calib-samples", "8", "--calib-seqlen", "128", "--eval-seqlen", "128", "--eval-windows", "4", "--decode-tokens", "8"]


@pytest.fixture(scope="module")
def farm_env(tmp_path_factory, pg_server_url, redis_url, s3_endpoint):
    """One farm for the module: PostgreSQL, Redis, a bucket in moto's S3."""
    import redis

    empty_database(pg_server_url)
    redis.Redis.from_url(redis_url).flushdb()
    bucket = f"qfarm-{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "QFARM_S3_ENDPOINT_URL": s3_endpoint,
        "QFARM_HOME": str(tmp_path_factory.mktemp("home")),
        "QFARM_DATABASE_URL": pg_server_url,
        "QFARM_BROKER_URL": redis_url,
        "QFARM_STORAGE_URL": f"s3://{bucket}/farm",
        "QFARM_USER": "ann",
        "HF_HUB_OFFLINE": "1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            mp.setenv(key, env[key])
        s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    run_cli("db", "upgrade", env=env, check=True)
    return env


@pytest.fixture(autouse=True)
def _aws_credentials(monkeypatch, farm_env):
    """This process reads the bucket too (to check what the worker wrote)."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "QFARM_S3_ENDPOINT_URL"):
        monkeypatch.setenv(key, farm_env[key])


@pytest.fixture(scope="module")
def worker(farm_env, tmp_path_factory):
    """One worker for the module's jobs, as `qfarm worker start` runs it."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-c", "from api_client.cli import main; main()", "worker", "start", "--gpus", "cpu"],
                            env=farm_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    from api_client.infra import queue

    deadline = time.monotonic() + 90
    while not any(q.startswith("qfarm.") for q in queue.served_queues(farm_env["QFARM_BROKER_URL"], timeout=1.0)):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)  # never leave a worker behind a failed start
            pytest.fail("worker did not come up:\n" + log_path.read_text()[-3000:])
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def db_of(env):
    return Database(env["QFARM_DATABASE_URL"])


def s3_objects(env, uri):
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = s3_client(env["QFARM_S3_ENDPOINT_URL"])
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def reached(env, job_id, stage, timeout=180):
    """Wait for the event of `stage` (a poll of the row can miss a stage a
    fast machine passes between two polls)."""
    db = db_of(env)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if any(e.stage == stage for e in jobs.events(db, job_id)):
                return
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} never reached {stage}")
    finally:
        db.dispose()


def wait_for(env, job_id, predicate, timeout=180):
    db = db_of(env)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            job = jobs.get(db, job_id)
            if predicate(job):
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} stuck in {job.state}/{job.stage}")
    finally:
        db.dispose()


def test_gptq_and_nf4_through_the_farm(farm_env, worker, tiny_model, tmp_path):
    nf4 = run_cli("submit", str(tiny_model), "--method", "nf4", *FAST[4:], env=farm_env, check=True).stdout.strip()
    proc = run_cli("submit", str(tiny_model), "--method", "gptq", *FAST, "--wait", "--json", env=farm_env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    gptq = json.loads(proc.stdout)
    watched = run_cli("watch", nf4, env=farm_env, timeout=600)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert watched.stdout.splitlines()[-1].split(" ", 2)[1] == "succeeded"

    db = db_of(farm_env)
    for job_id, method, stages in ((gptq["id"], "gptq", ["loading", "calibrating", "quantizing", "evaluating", "uploading"]),
                                   (nf4, "nf4", ["loading", "quantizing", "evaluating", "uploading"])):
        job = jobs.get(db, job_id)
        # On PostgreSQL the user is the role the client connected as, not QFARM_USER.
        role = make_url(farm_env["QFARM_DATABASE_URL"]).username
        assert job.state == "succeeded" and job.method == method and job.submitted_by == role
        assert job.worker.startswith("cpu-") and job.gpu_name == "cpu" and job.attempts == 1
        assert job.started_at <= job.finished_at
        assert job.ppl_baseline > 1 and job.ppl_quantized > 1 and job.ppl_ratio == pytest.approx(job.ppl_quantized / job.ppl_baseline)
        assert job.artifact_uri == f"{farm_env['QFARM_STORAGE_URL']}/jobs/{job_id}/"
        evs = jobs.events(db, job_id)
        assert [e.state for e in evs][:2] == ["queued", "running"] and evs[-1].state == "succeeded"
        seen = [e.stage for e in evs if e.stage]
        assert [s for i, s in enumerate(seen) if s not in seen[:i]] == stages

        # Every object in S3 is what the manifest says, and nothing else is there.
        objects = s3_objects(farm_env, job.artifact_uri)
        manifest = json.loads(objects.pop("manifest.json"))
        assert {f["path"]: f["sha256"] for f in manifest["files"]} == {k: hashlib.sha256(v).hexdigest() for k, v in objects.items()}
        assert manifest["job"]["id"] == job_id and manifest["job"]["params"] == job.params
        assert manifest["library_versions"]["transformers"] == "5.17.0"
        assert sum(f["bytes"] for f in manifest["files"]) == job.artifact_bytes
        assert "testing" not in json.dumps(manifest)  # no credentials

        dest = tmp_path / f"dl-{method}"
        run_cli("download", job_id, str(dest), env=farm_env, check=True)
        model = AutoModelForCausalLM.from_pretrained(dest, device_map="cpu")
        tok = AutoTokenizer.from_pretrained(dest)
        out = model.generate(**tok("Hammersmith was", return_tensors="pt"), max_new_tokens=5, do_sample=False)
        assert out.shape[1] > 5
    db.dispose()
    status = json.loads(run_cli("status", gptq["id"], "--json", env=farm_env, check=True).stdout)
    assert status == {**status, "state": "succeeded", "method": "gptq", "format": "compressed-tensors"}


def test_cancel_a_running_job_leaves_nothing_behind(farm_env, worker, tiny_model):
    # Enough calibration to keep AWQ busy for a while on the CPU.
    job_id = run_cli("submit", str(tiny_model), "--method", "awq", "--calib-samples", "64", "--calib-seqlen", "512",
                     env=farm_env, check=True).stdout.strip()
    reached(farm_env, job_id, "quantizing")
    assert run_cli("cancel", job_id, env=farm_env, check=True).stdout.strip() == f"{job_id} cancelled"
    job = wait_for(farm_env, job_id, lambda j: j.state == "cancelled")
    assert job.artifact_uri is None
    bucket = farm_env["QFARM_STORAGE_URL"].removeprefix("s3://").split("/")[0]
    assert s3_objects(farm_env, f"s3://{bucket}/farm/jobs/{job_id}/") == {}
    # The worker lives on and takes the next job.
    proc = run_cli("submit", str(tiny_model), "--method", "rtn", *FAST[4:], "--wait", env=farm_env, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_a_failing_job_says_why(farm_env, worker):
    proc = run_cli("submit", "acme/no-such-model", "--method", "rtn", "--wait", env=farm_env, timeout=300)
    assert proc.returncode != 0
    job_id = proc.stdout.split()[0]
    status = json.loads(run_cli("status", job_id, "--json", env=farm_env).stdout)
    assert status["state"] == "failed" and status["stage"] is None
    assert status["error"].startswith("cannot download acme/no-such-model from the Hugging Face hub")
    assert status["artifact_uri"] is None


def test_workers_shows_the_live_worker(farm_env, worker):
    listed = json.loads(run_cli("workers", "--json", env=farm_env, check=True).stdout)
    [row] = [w for w in listed if w["status"] == "live"]
    assert row["name"].startswith("cpu-") and row["gpu_index"] is None and row["gpu_name"] == "cpu"
    assert any(q.startswith("qfarm.") for q in row["queues"]) and row["stopped_at"] is None
    table = run_cli("workers", env=farm_env, check=True).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "STATUS", "HOST"] and row["name"] in table[1]


def test_compare_runs_a_group_and_a_failing_member_shows_its_reason(farm_env, worker, tiny_model):
    """`qfarm compare` of three methods through the worker: one row per
    method and the original, figures from the packed serve path, task
    recovery, a recommendation, and the member whose calibration text
    cannot be had on the worker (a hub dataset, the hub offline) failed with
    that reason while the others report."""
    missing = "hf:qfarm-test/no-such-calibration"
    proc = run_cli("compare", str(tiny_model), "--methods", "rtn,nf4,gptq", "--calib", missing, *FAST[2:],
                   "--tasks", "builtin", "--limit", "40", "--wait", "--json", env=farm_env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    table = json.loads(proc.stdout)
    rows = {r["label"]: r for r in table["rows"]}
    assert set(rows) == {"original", "rtn", "nf4", "gptq"}
    assert rows["gptq"]["state"] == "failed" and "qfarm-test/no-such-calibration" in rows["gptq"]["error"]
    for label, kernel in (("rtn", "gptq-"), ("nf4", "bnb-nf4")):
        row = rows[label]
        assert row["state"] == "succeeded" and row["serve_kernel"].startswith(kernel)
        assert 0.9 < row["ppl_ratio"] < 1.5 and 0 < row["weights_bytes"] < rows["original"]["weights_bytes"]
        assert row["tasks"]["qfarm_cloze"]["recovery"] is not None
    assert rows["original"]["state"] == "measured" and rows["original"]["task_recovery"] == 1.0
    assert table["recommended"] in ("rtn", "nf4") and rows[table["recommended"]]["recommended"]
    assert "2 members that succeeded" in table["why"]

    shown = run_cli("status", table["group"], env=farm_env, check=True).stdout
    assert "★" in shown and "no-such-calibration" in shown and "bnb-nf4" in shown


def test_a_task_directory_travels_with_the_job(farm_env, worker, tiny_model, tmp_path):
    """--tasks-dir: checked and uploaded at submit (a link inside it travels
    as the file it names), unpacked on the worker, run offline, recorded."""
    from tests.test_tasks import write_task_dir

    d = write_task_dir(tmp_path / "mine")
    (d / "data.jsonl").rename(d / "rows.jsonl")
    (d / "data.jsonl").symlink_to("rows.jsonl")
    proc = run_cli("submit", str(tiny_model), "--method", "rtn", *FAST[4:], "--tasks", "animals", "--tasks-dir", str(d),
                   "--limit", "4", "--wait", "--json", env=farm_env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    task = job["metrics"]["tasks"]["animals"]
    assert task["items"] == 4 and task["metric"] == "acc" and task["recovery"] is not None
    assert job["task_recovery"] == pytest.approx(task["recovery"])
