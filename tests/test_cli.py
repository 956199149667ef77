"""The CLI as a user runs it: bad input gets one line and a non-zero exit
before anything is queued or recorded. In-process (Click's CliRunner); the
installed entry point as a subprocess is exercised by the e2e and fault
suites."""

import json
import os
import re

import pytest

from api_client.infra.db import Database
from api_client.infra.db.jobs import list_jobs
from tests.support.cli import invoke as run_cli
from tests.support.models import copy_model


@pytest.fixture
def env(qfarm_env, redis_conn):
    run_cli("db", "upgrade", env=os.environ.copy(), check=True)
    return os.environ.copy()


def assert_nothing_queued(redis_conn, env):
    assert list(redis_conn.keys("qfarm*")) == []
    db = Database(env["QFARM_DATABASE_URL"])
    assert list_jobs(db) == []
    db.dispose()


@pytest.mark.parametrize("args,message", [
    (["--method", "gptqq"], "error: unknown method 'gptqq' (choose from awq, fp4, fp8, gguf, gptq, int8, nf4, rtn)"),
    (["--method", "gptq", "--bits", "3"], "error: gptq does not support --bits 3 (supported: 4/8)"),
    (["--method", "gptq", "--group-size", "100"], "error: gptq does not support --group-size 100 (supported: 32/64/128/-1)"),
    (["--method", "nf4", "--threshold", "5"], "error: --threshold does not apply to --method nf4 (it takes --compute-dtype, --double-quant)"),
    (["--method", "rtn", "--calib", "builtin"], "error: --method rtn takes no calibration data (--calib, --calib-samples, --calib-seqlen)"),
    (["--method", "gptq", "--format", "gguf"], "error: --method gptq writes compressed-tensors/gptq, not --format gguf"),
    (["--method", "gptq", "--calib", "/nope/calib.txt"], "error: calibration file /nope/calib.txt does not exist"),
    (["--method", "gguf", "--format", "q4_k_m,q3_k"],
     "error: --method gguf writes q4_k_m/q5_k_m/q6_k/q8_0/f16 (one or several, comma-separated), not --format q3_k"),
    (["--method", "gguf", "--format", "q8_0,q8_0"], "error: --format names a GGUF format twice: q8_0,q8_0"),
    (["--method", "gguf", "--format", "q8_0", "--calib", "builtin"],
     "error: --method gguf --format q8_0 with these options takes no calibration data (--calib, --calib-samples, --calib-seqlen)"),
    (["--method", "gguf", "--no-imatrix", "--calib-samples", "8"],
     "error: --method gguf --format q4_k_m with these options takes no calibration data (--calib, --calib-samples, --calib-seqlen)"),
])
def test_bad_options(env, redis_conn, tiny_model, args, message):
    proc = run_cli("submit", str(tiny_model), *args, env=env)
    assert proc.returncode != 0
    assert proc.stderr.strip() == message
    assert proc.stdout == ""
    assert_nothing_queued(redis_conn, env)


def test_paths_that_are_no_checkpoint(env, redis_conn, tmp_path):
    proc = run_cli("submit", str(tmp_path / "missing"), "--method", "gptq", env=env)
    assert proc.returncode != 0 and proc.stderr.strip() == f"error: model path {tmp_path / 'missing'} is not a directory"
    proc = run_cli("submit", str(tmp_path), "--method", "gptq", env=env)
    assert proc.stderr.strip() == f"error: {tmp_path} is not a Hugging Face checkpoint: it has no config.json"
    assert_nothing_queued(redis_conn, env)


def test_model_without_linear_layers(env, redis_conn, tmp_path):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["TinyEmbedder"]}))
    save_file({"embed_tokens.weight": torch.zeros(32, 16)}, str(tmp_path / "model.safetensors"))
    proc = run_cli("submit", str(tmp_path), "--method", "nf4", env=env)
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"error: TinyEmbedder at {tmp_path} has no linear layers to quantize"
    assert_nothing_queued(redis_conn, env)


def test_unreachable_broker_and_database(env, redis_conn, tiny_model):
    proc = run_cli("submit", str(tiny_model), "--method", "gptq",
                   env={**env, "QFARM_BROKER_URL": "redis://:hunter2@127.0.0.1:1/0"})
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: cannot reach the broker at redis://***@127.0.0.1:1/0:")
    assert "hunter2" not in proc.stderr and proc.stderr.count("\n") == 1
    proc = run_cli("submit", str(tiny_model), "--method", "gptq",
                   env={**env, "QFARM_DATABASE_URL": "postgresql://qf:hunter2@127.0.0.1:1/qfarm"})
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: cannot reach the database at postgresql+psycopg://qf:***@127.0.0.1:1/qfarm:")
    assert "hunter2" not in proc.stderr and proc.stderr.count("\n") == 1
    assert_nothing_queued(redis_conn, env)


def test_unmigrated_database(qfarm_env, redis_conn, tiny_model):
    proc = run_cli("submit", str(tiny_model), "--method", "gptq", env=os.environ.copy())
    assert proc.returncode != 0
    assert proc.stderr.strip().endswith("has no qfarm tables: run `qfarm db upgrade`")


def test_fp8_without_a_capable_worker(env, redis_conn, tiny_model):
    proc = run_cli("submit", str(tiny_model), "--method", "fp8", env=env)
    assert proc.returncode != 0
    assert re.fullmatch(r"error: no live worker can run this job: --method fp8 needs a GPU of compute capability 8\.9 "
                        r"or newer \(Ada, Hopper\), and no worker serving queue qfarm\.\w+\.sm89 answered", proc.stderr.strip())
    assert_nothing_queued(redis_conn, env)


def test_submit_queues_one_message_and_one_row(env, redis_conn, tiny_model):
    proc = run_cli("submit", str(tiny_model), "--method", "gptq", "--json", env=env, check=True)
    out = json.loads(proc.stdout)
    assert out["state"] == "queued" and len(out["id"]) == 12
    [key] = list(redis_conn.keys("qfarm.*"))
    assert redis_conn.llen(key) == 1
    message = json.loads(redis_conn.lindex(key, 0))
    assert message["headers"]["id"] == out["id"] and message["headers"]["task"] == "qfarm.run_job"
    status = json.loads(run_cli("status", out["id"][:6], "--json", env=env, check=True).stdout)
    assert status["state"] == "queued" and status["method"] == "gptq" and status["submitted_by"] == "tester"
    assert status["params"]["group_size"] == 128 and status["calib"] == {"source": "builtin", "samples": None, "seqlen": None}
    listed = json.loads(run_cli("list", "--state", "queued", "--json", env=env, check=True).stdout)
    assert [j["id"] for j in listed] == [out["id"]]
    cancelled = run_cli("cancel", out["id"], env=env, check=True)
    assert cancelled.stdout.strip() == f"{out['id']} cancelled"
    again = run_cli("cancel", out["id"], env=env)
    assert again.returncode != 0 and again.stderr.strip() == f"error: job {out['id']} already cancelled"


def test_local_calibration_file_travels_with_the_job(env, redis_conn, tiny_model, tmp_path):
    calib = tmp_path / "mine.jsonl"
    calib.write_text('{"text": "some calibration text"}\n' * 300)
    proc = run_cli("submit", str(tiny_model), "--method", "awq", "--calib", str(calib), "--json", env=env, check=True)
    job_id = json.loads(proc.stdout)["id"]
    status = json.loads(run_cli("status", job_id, "--json", env=env, check=True).stdout)
    stored = status["calib"]["source"]
    assert stored.startswith("file://") and stored.endswith(f"inputs/{job_id}/calib.jsonl")
    assert open(stored.removeprefix("file://")).read() == calib.read_text()


def test_unknown_job(env):
    proc = run_cli("status", "ffffffff", env=env)
    assert proc.returncode != 0 and proc.stderr.strip() == "error: no job 'ffffffff'"


def test_what_a_worker_would_trip_on_is_said_at_submit(env, redis_conn, tiny_model, tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"model_type": "llama"}')
    cases = [
        (["--method", "rtn", "--eval-seqlen", "4096"],
         "error: --eval-seqlen 4096 is longer than the model's context of 512 tokens (max_position_embeddings in config.json)"),
        (["--method", "gptq", "--calib-samples", "99999"],
         "error: calibration text builtin holds "),
        (["--method", "gptq", "--calib", str(config)],
         f"error: calibration file {config}: line 1 has no 'text' string field"),
    ]
    for args, message in cases:
        proc = run_cli("submit", str(tiny_model), *args, env=env)
        assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    assert_nothing_queued(redis_conn, env)


def test_job_references_version_and_traceback(env, tiny_model):
    from api_client.infra.db import JobState, jobs

    ids = [json.loads(run_cli("submit", str(tiny_model), "--method", "rtn", "--json", env=env, check=True).stdout)["id"]
           for _ in range(2)]
    short = run_cli("status", ids[0][:2], env=env)
    assert short.returncode == 2 and short.stderr.strip() == f"error: give at least 4 characters of a job id, not {ids[0][:2]!r}"
    db = Database(env["QFARM_DATABASE_URL"])
    jobs.transition(db, ids[0], expect=[JobState.QUEUED], state=JobState.FAILED, error="boom",
                    error_traceback="Traceback (most recent call last):\n  ValueError: boom")
    db.dispose()
    shown = run_cli("status", ids[0], "--traceback", env=env, check=True).stdout
    assert re.search(r"^error +boom$", shown, re.M) and shown.rstrip().endswith("ValueError: boom")
    assert run_cli("--version", env=env, check=True).stdout.startswith("qfarm 0.")


def test_submit_says_how_long_and_wait_says_what_runs_ahead(env, tiny_model):
    first = run_cli("submit", str(tiny_model), "--method", "rtn", env=env, check=True)
    assert re.fullmatch(r"estimated ~[\d.]+ s on CPU workers, ~[\d.]+ s on H100 workers\n", first.stderr), first.stderr
    status = run_cli("status", first.stdout.strip(), env=env, check=True).stdout
    assert re.search(r"^estimate +~[\d.]+ s on CPU workers", status, re.M)
    from api_client.app.client import Client

    second = json.loads(run_cli("submit", str(tiny_model), "--method", "nf4", "--json", env=env, check=True).stdout)["id"]
    ahead = Client().queue_ahead(second)
    assert [j.id for j in ahead] == [first.stdout.strip()]


def test_a_job_that_asks_for_a_gpu_waits_for_a_gpu_worker(env, redis_conn, tiny_model):
    proc = run_cli("submit", str(tiny_model), "--method", "rtn", "--weights", "gpu", "--max-vram", "16GiB", env=env)
    assert proc.returncode == 2
    assert re.fullmatch(r"error: no live worker can run this job: --weights gpu and --max-vram need a GPU worker, "
                        r"and no worker serving queue qfarm\.\w+\.gpu answered\n", proc.stderr), proc.stderr
    assert_nothing_queued(redis_conn, env)


def test_a_mistyped_path_is_not_queued_as_a_hub_model(env, redis_conn, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = run_cli("submit", "nomodel", "--method", "rtn", env={**env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: model nomodel is no local directory, and the Hugging Face hub could not be "
                                   "reached to confirm a model of that name: give a path (./nomodel) or the hub's org/name")
    assert_nothing_queued(redis_conn, env)


def test_status_shows_every_accuracy_figure_with_its_interval(env, tiny_model):
    """What a finished job recorded, as `qfarm status` and `--json` show it:
    the perplexity ratio's interval, the KL divergence and the tokens it
    covered, task scores and recovery with ± (95 %), serve speeds with how
    they were timed, and what makes the artifact reproducible."""
    from api_client.infra.db import JobState, jobs

    job_id = json.loads(run_cli("submit", str(tiny_model), "--method", "rtn", "--json", env=env, check=True).stdout)["id"]
    timing = {"method": "hf-static-cudagraph", "shape": "1x32+64", "repeats": 3, "decode_tokens_per_s_sd": 0.4,
              "fallback": None}
    db = Database(env["QFARM_DATABASE_URL"])
    jobs.transition(db, job_id, expect=[JobState.QUEUED], state=JobState.SUCCEEDED, ppl_baseline=10.0, ppl_quantized=10.1,
                    ppl_ratio=1.01, ppl_ratio_low=1.004, ppl_ratio_high=1.017, kl_divergence=0.0123, kl_divergence_p99=0.0871,
                    task_recovery=0.975, task_recovery_stderr=0.021, serve_kernel="gptq-marlin",
                    serve_method="hf-static-cudagraph", serve_tokens_per_s=61.2, serve_tokens_per_s_baseline=29.5,
                    library_versions={"torch": "2.11.0", "transformers": "5.17.0"},
                    metrics={"kl_tokens": 8192, "kl_interval": [0.0118, 0.0129], "kl_same_top": 0.97,
                             "serve_decode": timing, "serve_decode_baseline": {**timing, "decode_tokens_per_s_sd": 0.2},
                             "artifact_sha256": "ab" * 32,
                             "environment": {"seed": 0, "device": "NVIDIA H200", "gpu_capability": "9.0",
                                             "driver": "580.159.04", "cuda_runtime": "13.0"},
                             "tasks": {"qfarm_cloze": {"metric": "acc_norm", "baseline": 0.56, "baseline_stderr": 0.0287,
                                                       "quantized": 0.546, "quantized_stderr": 0.0288, "items": 300,
                                                       "recovery": 0.975, "recovery_stderr": 0.021, "recovery_paired": True}}})
    db.dispose()
    shown = run_cli("status", job_id, env=env, check=True).stdout
    lines = {line.split("  ")[0]: line for line in shown.splitlines()}
    assert "(ratio 1.0100, 95 % 1.0040-1.0170)" in lines["perplexity"]
    assert "mean 0.0123 nats (95 % 0.0118-0.0129), p99 0.0871, same top token 97.0 %, over 8192 tokens" in lines["KL divergence"]
    assert "acc_norm 0.5600 ± 0.0563 → 0.5460 ± 0.0564 over 300 items, recovery 97.5 % ± 4.1 paired" in lines["task qfarm_cloze"]
    assert lines["task recovery"].endswith("97.5 % ± 4.1")
    assert "29.5 (sd 0.2) → 61.2 (sd 0.4) (gptq-marlin, hf-static-cudagraph, 1x32+64, 3 repeats)" in lines["serve decode tok/s"]
    assert lines["artifact sha256"].endswith("ab" * 32)
    assert "seed 0; NVIDIA H200 (compute 9.0), driver 580.159.04, CUDA 13.0" in lines["environment"]
    assert "torch 2.11.0, transformers 5.17.0" in lines["libraries"]
    row = json.loads(run_cli("status", job_id, "--json", env=env, check=True).stdout)
    assert (row["ppl_ratio_low"], row["kl_divergence"], row["task_recovery_stderr"], row["serve_method"]) == \
        (1.004, 0.0123, 0.021, "hf-static-cudagraph")


def test_a_path_with_a_typo_is_not_taken_for_a_hub_id(env, redis_conn, tmp_path, monkeypatch):
    (tmp_path / "shared" / "refmodel").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    proc = run_cli("submit", "shared/refmodl", "--method", "rtn", env=env)
    assert proc.returncode == 2
    assert proc.stderr == "error: model shared/refmodl is no local directory, though shared/ is one: did you mean shared/refmodel?\n"
    assert_nothing_queued(redis_conn, env)


def test_a_model_without_its_tokenizer_is_refused_at_submit(env, redis_conn, tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path / "m")
    for f in model.glob("tokenizer*"):
        f.unlink()
    proc = run_cli("submit", str(model), "--method", "rtn", env=env)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: {model} has no tokenizer (tokenizer.json, tokenizer.model, vocab.json or *.tiktoken): "
                           f"copy the tokenizer's files beside config.json\n")
    assert_nothing_queued(redis_conn, env)


def test_a_queued_job_says_why_it_waits(env, tiny_model):
    """No live worker serves its queue: said (it waits for one); with one,
    the jobs ahead of it."""
    from api_client.app.client import Client
    from api_client.infra.db import workers

    first = run_cli("submit", str(tiny_model), "--method", "rtn", env=env, check=True).stdout.strip()
    client = Client()
    queue = client.status(first).queue
    assert client.waiting(first) == f"queued; no live worker serves {queue}: start one (`qfarm worker start`)"
    workers.heartbeat(client.db, workers.Beat(name="cpu-0@host", host="host", pid=1, gpu_index=None, gpu_name="cpu",
                                              gpu_total_bytes=None, gpu_free_bytes=None, queues=[queue], current_job=None,
                                              jobs_done=0))
    assert client.waiting(first) is None  # next for the live worker
    second = run_cli("submit", str(tiny_model), "--method", "nf4", env=env, check=True).stdout.strip()
    assert client.waiting(second) == f"queued behind 1 job(s): {first} rtn (queued)"
    client.close()


def test_ctrl_c_while_waiting_says_the_job_stays_queued(env, tiny_model):
    import signal
    import subprocess

    from api_client.app.client import Client
    from tests.support.cli import QFARM

    # SIGINT as a terminal sends it (a shell's background job would start with it ignored).
    proc = subprocess.Popen([*QFARM, "submit", str(tiny_model), "--method", "rtn", "--wait"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        job_id = proc.stdout.readline().split()[0]  # "<id> queued"; no worker takes it
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.splitlines()[-1] == (f"stopped following job {job_id}, which stays queued: `qfarm watch {job_id}` "
                                    f"looks again, `qfarm cancel` stops a job")
    client = Client()
    assert client.status(job_id).state == "queued"
    # `qfarm watch` says why the job waits, and Ctrl-C leaves it queued too.
    proc = subprocess.Popen([*QFARM, "watch", job_id], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        hint = proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert hint == f"(queued; no live worker serves {client.status(job_id).queue}: start one (`qfarm worker start`))\n"
    assert proc.returncode == 130 and f"stopped following job {job_id}, which stays queued" in err
    assert client.status(job_id).state == "queued"
    client.close()


def test_the_progress_clock_counts_from_the_job_s_start():
    from datetime import timedelta

    from api_client.cli.render import clock
    from api_client.infra.db import Job
    from api_client.infra.db.models import utcnow

    submitted = utcnow() - timedelta(hours=1)
    assert clock(Job(id="j1", created_at=submitted)) == "-:--:--"
    assert clock(Job(id="j1", created_at=submitted, started_at=utcnow() - timedelta(seconds=65))) in ("0:01:05", "0:01:06")
    assert clock(Job(id="j1", created_at=submitted, started_at=submitted + timedelta(minutes=59),
                     finished_at=submitted + timedelta(minutes=61, seconds=3))) == "0:02:03"


def test_list_fits_100_columns_and_wide_shows_every_column(env, tiny_model, tmp_path):
    deep = copy_model(tiny_model, tmp_path / ("a-long-directory-name-" * 4) / "the-model")
    for args in (["--method", "gptq", "--format", "gptq"], ["--method", "rtn"]):
        run_cli("submit", str(deep), *args, env=env, check=True)
    narrow = run_cli("list", env=env, check=True).stdout.splitlines()
    assert len(narrow) == 3 and max(map(len, narrow)) <= 100, narrow
    assert narrow[0].split() == ["ID", "STATE", "METHOD", "USER", "CREATED", "TIME", "/", "ESTIMATE", "QUANT.", "PPL", "RATIO",
                                "MODEL"]
    assert narrow[1].split()[1:3] == ["queued", "rtn"] and narrow[2].split()[1:3] == ["queued", "gptq:gptq"]
    wide = run_cli("list", "--wide", env=env, check=True).stdout.splitlines()
    assert {"STAGE", "PRIORITY", "EVAL"} <= set(wide[0].split()) and wide[1].endswith(str(deep))


def test_a_compare_table_fits_100_columns_and_wide_shows_every_column(env, tiny_model):
    group = run_cli("compare", str(tiny_model), "--methods", "gptq,gptq:gptq,awq,nf4,int8,rtn", env=env, check=True).stdout
    group = group.strip()
    narrow = run_cli("status", group, env=env, check=True).stdout.splitlines()
    assert max(map(len, narrow)) <= 100, "\n".join(narrow)
    header = {c.strip() for c in next(line for line in narrow if "ppl ratio" in line).split("┃")}
    assert {"method", "serve VRAM", "kernel", "state"} <= header and not {"quantized", "weights", "quantize"} & header
    assert sum("queued" in line for line in narrow) == 7  # the original and six methods
    wide = run_cli("status", group, "--wide", env=env, check=True).stdout.splitlines()
    assert {"quantized", "weights", "kernel", "quantize"} <= {c.strip() for c in next(x for x in wide if "kernel" in x).split("┃")}
