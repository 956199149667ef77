"""`qfarm publish` against a hub in the test (tests/fakehub.py: a real HTTP
server speaking the Hub API huggingface_hub calls): the artifact's files and
a model card whose metadata the hub validates, the commit recorded and shown
by status, a second publish that changes nothing, a compare group; and every
failure (bad token, no write access, a wrong endpoint, a repo of another
owner, the line dropping mid-upload, a corrupt artifact, a card the hub
refuses) in one line, with the job's record unchanged and the token nowhere."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from api_client.app import artifacts
from api_client.infra.db import Database, groups, jobs, publications
from api_client.infra.db.models import Job, JobGroup
from api_client.infra.storage import open_store
from tests.support.cli import invoke
from tests.support.fakehub import FakeHub

TOKEN = "tok-alice"


@pytest.fixture
def hub():
    server = FakeHub().start()
    yield server
    server.stop()


@pytest.fixture
def env(qfarm_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("QFARM_HF_TOKEN_FILE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    invoke("db", "upgrade", env=os.environ.copy(), check=True)
    return os.environ.copy()


@pytest.fixture
def db(env):
    database = Database(env["QFARM_DATABASE_URL"])
    yield database
    database.dispose()


@pytest.fixture
def base_model(tiny_model, tmp_path):
    """The model the job read, with the card a hub copy carries (its license)."""
    model = tmp_path / "base"
    shutil.copytree(tiny_model, model)
    (model / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a base model\n")
    return model


def make_job(db, env, job_id, model: Path, method="gptq", fmt="compressed-tensors", ratio=1.0123, **extra) -> Job:
    """A succeeded job with a real artifact (the model's files) and manifest."""
    row = Job(id=job_id, state="succeeded", method=method, format=fmt, params={"bits": 4, "group_size": 128},
              model=str(model), calib={"source": "builtin", "samples": 4, "seqlen": 64},
              eval={"source": "builtin", "seqlen": 64, "windows": 2, "decode_tokens": 2, "tasks": None},
              queue="qfarm.test", submitted_by="tester", attempts=1, worker="w1@host-a", gpu_name="NVIDIA H100",
              ppl_baseline=20.0, ppl_quantized=20.0 * ratio, ppl_ratio=ratio, quantize_seconds=12.5,
              weights_bytes=1_000_000, weights_bytes_baseline=2_000_000, serve_vram_bytes=3_000_000,
              serve_vram_baseline_bytes=4_000_000, serve_kernel="gptq-tritonv2", serve_tokens_per_s=40.0,
              serve_tokens_per_s_baseline=50.0, library_versions={"torch": "2.13.0", "llmcompressor": "0.14.0.1"},
              metrics={"eval_seqlen": 64, "eval_windows": 2, "eval_tokens": 126, "ppl_kernel": "dense",
                       "calib_samples_used": 4, "calib_seqlen": 64,
                       "tasks": {"qfarm_cloze": {"metric": "acc_norm", "baseline": 0.5, "quantized": 0.48,
                                                 "recovery": 0.96, "items": 100}}}, **extra)
    folder = Path(env["QFARM_HOME"]) / f"src-{job_id}"
    shutil.copytree(model, folder, ignore=shutil.ignore_patterns("README.md"))
    row.artifact_uri = artifacts.publish(open_store(env["QFARM_STORAGE_URL"]), job_id, folder,
                                         {"qfarm_manifest": 1, "job": {"id": job_id, "worker": "w1@host-a"}})
    jobs.create(db, row)
    return jobs.get(db, job_id)


def publish(env, *args, token=TOKEN, **more):
    return invoke("publish", *args, env={**env, **({"HF_TOKEN": token} if token else {}), **more})


def snapshot(db, job_id):
    return jobs.to_dict(jobs.get(db, job_id)), [p.revision for p in publications.of_job(db, job_id)]


def assert_no_token(*texts):
    for text in texts:
        assert TOKEN not in text and "tok-" not in text


# -- publishing -----------------------------------------------------------------

def test_publish_uploads_the_artifact_and_a_card_records_it_and_a_second_publish_changes_nothing(env, db, hub, base_model):
    job = make_job(db, env, "pub000000001", base_model)
    proc = publish(env, job.id, "alice/tiny-gptq", "--endpoint", hub.url, "--base-model", "meta/tiny")
    assert proc.returncode == 0, proc.stderr
    revision = hub.repos["alice/tiny-gptq"].commits[-1][0]
    assert proc.stdout.strip().startswith(f"published job {job.id} to {hub.url}/alice/tiny-gptq at {revision} (6 files, ")

    files = hub.files("alice/tiny-gptq")
    local = {p.name: p.read_bytes() for p in base_model.iterdir() if p.name != "README.md"}
    assert {p: b for p, b in files.items() if p not in ("README.md", ".gitattributes")} == local
    card = files["README.md"].decode()
    _check_card(card, job, base="meta/tiny", license_="apache-2.0")
    assert "| task | metric | original | quantized | recovery | items |" in card and "| 96.0 % |" in card
    assert "vllm serve alice/tiny-gptq" in card and "w1@host-a" not in card and "tester" not in card

    rows = publications.of_job(db, job.id)
    assert [(p.repo, p.revision, p.endpoint, p.published_by) for p in rows] == [("alice/tiny-gptq", revision, hub.url, "tester")]
    status = invoke("status", job.id, env=env, check=True).stdout
    assert re.search(rf"^published +{re.escape(hub.url)}/alice/tiny-gptq at {revision} ", status, flags=re.MULTILINE), status
    assert json.loads(invoke("status", job.id, "--json", env=env, check=True).stdout)["publications"][0]["revision"] == revision

    commits = hub.commit_count("alice/tiny-gptq")
    again = publish(env, job.id, "alice/tiny-gptq", "--endpoint", hub.url, "--base-model", "meta/tiny")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{hub.url}/alice/tiny-gptq already holds job {job.id}'s files and card at {revision}: nothing changed"
    assert hub.commit_count("alice/tiny-gptq") == commits and len(publications.of_job(db, job.id)) == 1
    assert sum(1 for m, p in hub.requests if m == "PUT") == 1  # the weights went up once
    assert_no_token(proc.stdout, proc.stderr, again.stdout, again.stderr, card, status)


def _check_card(card: str, job: Job, base: str, license_: str | None) -> None:
    """The card's metadata as the hub and huggingface_hub read it, with the job's figures."""
    from huggingface_hub import ModelCard

    data = ModelCard(card).data
    assert data.base_model == base and data.base_model_relation == "quantized" and data.license == license_
    assert data.tags[:2] == ["qfarm", job.method]
    results = {(r.metric_type, r.metric_name): r.metric_value for r in data.eval_results}
    assert results[("perplexity", f"perplexity, {job.format.split(',')[0]}")] == round(job.ppl_quantized, 4)
    assert f"**ratio {job.ppl_ratio:.4f}**" in card
    assert f"qfarm submit {base} --method {job.method}" in card


def test_a_dry_run_checks_the_artifact_and_sends_nothing(env, db, hub, base_model):
    job = make_job(db, env, "pub000000002", base_model)
    before = snapshot(db, job.id)
    proc = publish(env, job.id, "alice/tiny", "--endpoint", hub.url, "--dry-run", token=None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"would publish job {job.id} to {hub.url}/alice/tiny: 6 files")
    assert "  model.safetensors (" in proc.stdout and "--- README.md ---\n---\n" in proc.stdout
    assert "license: apache-2.0" in proc.stdout  # from the card beside the model the job read
    assert hub.requests == [] and snapshot(db, job.id) == before


def test_a_large_artifact_goes_up_through_upload_large_folder(env, db, hub, base_model):
    from api_client.app.client import Client

    job = make_job(db, env, "pub000000003", base_model)
    os.environ["HF_TOKEN"] = TOKEN
    try:
        done = Client().publish(job.id, "alice/tiny-large", endpoint=hub.url, large_folder_bytes=0)
    finally:
        del os.environ["HF_TOKEN"]
    head = hub.repos["alice/tiny-large"].commits[-1][0]
    assert done[0].revision == head and done[0].changed
    assert set(hub.files("alice/tiny-large")) == {".gitattributes", "README.md", *(p.name for p in base_model.iterdir())}
    assert [p.revision for p in publications.of_job(db, job.id)] == [head]


def test_a_groups_recommended_member_or_every_member(env, db, hub, base_model):
    gptq = make_job(db, env, "pub000000004", base_model, ratio=1.02)
    gguf = make_job(db, env, "pub000000005", base_model, method="gguf", fmt="q8_0", ratio=1.001)
    group = JobGroup(id="gpub00000001", kind="compare", model=str(base_model), methods=["gptq", "gguf:q8_0"], limits={},
                     submitted_by="tester")
    with db.session() as s:
        s.add(group)
        for job_id in (gptq.id, gguf.id):
            s.get(Job, job_id).group_id = group.id
    assert groups.get(db, group.id) is not None
    proc = publish(env, group.id, "alice/tiny-best", "--endpoint", hub.url)
    assert proc.returncode == 0, proc.stderr
    assert f"published job {gguf.id} to" in proc.stdout  # the lower perplexity ratio
    proc = publish(env, group.id, "team/tiny", "--endpoint", hub.url, "--members", "all")
    assert proc.returncode == 0, proc.stderr
    assert {"team/tiny-gptq", "team/tiny-gguf-q8_0"} <= set(hub.repos)


# -- failures: one line each, nothing recorded --------------------------------------

def _fails(env, db, job, args, message, **kw):
    """`message` is the one error line (after, at most, the line saying the
    artifact was verified), and nothing changed."""
    before = snapshot(db, job.id)
    proc = publish(env, job.id, *args, **kw)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == message and all(line.endswith("verified against the artifact's manifest") for line in lines[:-1]), proc.stderr
    assert proc.stdout == "" and snapshot(db, job.id) == before
    assert_no_token(proc.stderr)
    return proc


def test_a_rejected_token(env, db, hub, base_model):
    job = make_job(db, env, "pub000000011", base_model)
    _fails(env, db, job, ["alice/x", "--endpoint", hub.url],
           f"error: the hub at {hub.url} rejected the token (401 Unauthorized): check HF_TOKEN or QFARM_HF_TOKEN_FILE",
           token="tok-forged")
    _fails(env, db, job, ["alice/x", "--endpoint", hub.url],
           "error: no hub token: set HF_TOKEN, or QFARM_HF_TOKEN_FILE to a file holding it", token=None)
    assert "alice/x" not in hub.repos


def test_a_token_without_write_access(env, db, hub, base_model):
    job = make_job(db, env, "pub000000012", base_model)
    hub.add_repo("alice/x", {})
    _fails(env, db, job, ["alice/x", "--endpoint", hub.url],
           "error: the token of alice is read-only: publishing needs one with write access", token="tok-alice-read")
    # A fine-grained token without the right: the hub's 403 when it writes.
    _fails(env, db, job, ["alice/x", "--endpoint", hub.url],
           f"error: the token may not write to alice/x at {hub.url} (403 Forbidden: You don't have the rights to write "
           f"to alice/x); a token with write access is needed", token="tok-alice-fine")
    assert hub.commit_count("alice/x") == 1


def test_an_endpoint_that_is_no_hub(env, db, hub, base_model):
    job = make_job(db, env, "pub000000013", base_model)
    _fails(env, db, job, ["alice/x", "--endpoint", f"{hub.url}/nothub"],
           f"error: {hub.url}/nothub answered 404 Not Found for alice/x (no route GET /nothub/api/whoami-v2): "
           f"is --endpoint a hub's URL?")


def test_a_repo_of_another_owner(env, db, hub, base_model):
    job = make_job(db, env, "pub000000014", base_model)
    hub.add_repo("bob/model", {"README.md": b"# bob's\n"})
    _fails(env, db, job, ["bob/model", "--endpoint", hub.url],
           "error: bob/model exists and belongs to bob, where the token's user alice cannot write: "
           "publish under your own namespace or an organisation you belong to")
    _fails(env, db, job, ["carol/model", "--endpoint", hub.url],
           "error: carol/model: the token's user alice cannot create repos under carol (its namespaces: alice, team)")
    assert hub.commit_count("bob/model") == 1 and "carol/model" not in hub.repos


def test_the_line_dropping_mid_upload(env, db, hub, base_model):
    job = make_job(db, env, "pub000000015", base_model)
    hub.cut = "commit"
    _fails(env, db, job, ["alice/cut", "--endpoint", hub.url],
           f"error: the connection to {hub.url} failed while publishing alice/cut (RemoteProtocolError: Server "
           f"disconnected without sending a response.): nothing was committed; run the same command again")
    assert hub.commit_count("alice/cut") == 1  # the repo's first commit only
    puts = sum(1 for m, _ in hub.requests if m == "PUT")
    # Run again: the objects already up are not sent twice, the commit lands.
    proc = publish(env, job.id, "alice/cut", "--endpoint", hub.url)
    assert proc.returncode == 0, proc.stderr
    assert sum(1 for m, _ in hub.requests if m == "PUT") == puts and hub.commit_count("alice/cut") == 2
    # A drop during an object's upload is retried by huggingface_hub and heals.
    hub.cut, hub.cut_times = "lfs_put", 1
    other = make_job(db, env, "pub000000016", base_model, ratio=1.5)
    proc = publish(env, other.id, "alice/cut2", "--endpoint", hub.url)
    assert proc.returncode == 0, proc.stderr
    assert hub.files("alice/cut2")["model.safetensors"] == (base_model / "model.safetensors").read_bytes()


def test_a_corrupt_artifact_is_refused_before_the_hub_is_called(env, db, hub, base_model):
    job = make_job(db, env, "pub000000017", base_model)
    stored = Path(job.artifact_uri.removeprefix("file://")) / "model.safetensors"
    stored.write_bytes(stored.read_bytes()[:-8] + b"garbage!")
    before = snapshot(db, job.id)
    proc = publish(env, job.id, "alice/x", "--endpoint", hub.url)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: model.safetensors is corrupt: sha256 ")
    assert len(proc.stderr.strip().splitlines()) == 1
    # Only the token's owner was asked for: nothing was created or sent.
    assert hub.requests == [("GET", "/api/whoami-v2")] and "alice/x" not in hub.repos and snapshot(db, job.id) == before


def test_a_card_the_hub_refuses(env, db, hub, base_model):
    (base_model / "README.md").write_text("---\nlicense: my-own-terms\n---\n")
    job = make_job(db, env, "pub000000018", base_model)
    _fails(env, db, job, ["alice/x", "--endpoint", hub.url],
           f"error: the hub at {hub.url} refused the model card for alice/x: Invalid metadata in README.md. "
           f"- \"license\" must be a known license id, not 'my-own-terms'")
    assert hub.commit_count("alice/x") == 1


def test_the_token_from_a_file(env, db, hub, base_model, tmp_path):
    job = make_job(db, env, "pub000000019", base_model)
    token_file = tmp_path / "hf-token"
    token_file.write_text(TOKEN + "\n")
    proc = publish(env, job.id, "alice/from-file", "--endpoint", hub.url, token=None, QFARM_HF_TOKEN_FILE=str(token_file))
    assert proc.returncode == 0, proc.stderr
    token_file.write_bytes(b"\x00\x01binary")
    _fails(env, db, job, ["alice/from-file", "--endpoint", hub.url],
           "error: the file QFARM_HF_TOKEN_FILE names does not hold a token (one line of printable ASCII)",
           token=None, QFARM_HF_TOKEN_FILE=str(token_file))


# -- real jobs ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method,fmt", [("gptq", None), ("gguf", "q8_0")])
def test_a_real_jobs_artifact_is_published_with_its_figures(env, db, hub, tiny_model, method, fmt):
    from api_client.app.client import job_row
    from api_client.config import Settings
    from api_client.contract.spec import CalibSpec, EvalSpec, JobSpec, resolve
    from worker import runner

    spec = JobSpec(model=str(tiny_model), method=method, format=fmt, calib=CalibSpec(samples=4, seqlen=64) if method == "gptq" else None,
                   eval=EvalSpec(seqlen=64, windows=2, decode_tokens=2))
    job_id = f"real{method}".ljust(12, "0")
    jobs.create(db, job_row(resolve(spec), job_id, "tester", "qfarm.test"))
    runner.execute(job_id, Settings.from_env(), worker="test@host")
    job = jobs.get(db, job_id)
    assert job.state == "succeeded", job.error

    repo = f"alice/tiny-{method}"
    proc = publish(env, job.id, repo, "--endpoint", hub.url, "--base-model", "meta/tiny")
    assert proc.returncode == 0, proc.stderr
    manifest = artifacts.read_manifest(job.artifact_uri)
    files = hub.files(repo)
    assert set(files) == {".gitattributes", "README.md", *(e["path"] for e in manifest["files"])}
    artifact = Path(job.artifact_uri.removeprefix("file://"))
    assert all(files[e["path"]] == (artifact / e["path"]).read_bytes() for e in manifest["files"])
    card = files["README.md"].decode()
    _check_card(card, job, base="meta/tiny", license_=None)
    assert ("llama-cli -hf alice/tiny-gguf:Q8_0" in card) == (method == "gguf")
    again = publish(env, job.id, repo, "--endpoint", hub.url, "--base-model", "meta/tiny")
    assert "nothing changed" in again.stdout and hub.commit_count(repo) == 2
