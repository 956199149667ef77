"""Every method on a tiny random Llama, run by the worker's job runner
in-process: the job succeeds, the artifact reloads and predicts what the
original predicts (within bounds a garbage artifact fails), the checkpoint
says what was asked, and the manifest records parameters and library
versions."""

import json
import os
import time
from importlib import metadata
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from api_client.app.client import job_row
from api_client.contract.spec import CalibSpec, EvalSpec, JobSpec, resolve
from api_client.infra.db import jobs
from tests.support.models import BOUNDS, agreement, logits, windows
from worker import runner

pytestmark = pytest.mark.slow

CASES = [
    # method, format, params, what the saved config must say
    ("gptq", None, {}, {"quant_method": "compressed-tensors", "num_bits": 4, "group_size": 128, "symmetric": True}),
    ("gptq", None, {"bits": 8, "group_size": 64, "symmetric": False, "act_order": False},
     {"quant_method": "compressed-tensors", "num_bits": 8, "group_size": 64, "symmetric": False}),
    ("awq", None, {}, {"quant_method": "compressed-tensors", "num_bits": 4, "group_size": 128, "symmetric": False}),
    ("rtn", None, {"group_size": -1}, {"quant_method": "compressed-tensors", "num_bits": 4, "strategy": "channel"}),
    ("gptq", "gptq", {}, {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True}),
    ("awq", "awq", {}, {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}),
    ("nf4", None, {}, {"quant_method": "bitsandbytes", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}),
    ("fp4", None, {"double_quant": False}, {"quant_method": "bitsandbytes", "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False}),
    ("int8", None, {"threshold": 4.0}, {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 4.0}),
]


@pytest.fixture(scope="module")
def reference(tiny_model):
    """The original's logits on four windows of the evaluation text, and its greedy continuation."""
    tokens = windows(tiny_model)
    return tokens, logits(tiny_model, tokens), greedy(tiny_model)


def greedy(model_dir: Path, n: int = 8) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="cpu")
    inputs = AutoTokenizer.from_pretrained(model_dir)("The people of the river", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def run_in_process(settings, db, spec: JobSpec, job_id: str):
    jobs.create(db, job_row(resolve(spec), job_id, "tester", "qfarm.test"))
    runner.execute(job_id, settings, worker="test@host")
    return jobs.get(db, job_id)


def flatten(d, out=None):
    out = {} if out is None else out
    for k, v in d.items():
        if isinstance(v, dict):
            flatten(v, out)
        out.setdefault(k, v)
    return out


@pytest.mark.parametrize("method,fmt,params,expect", CASES, ids=[f"{c[0]}-{c[1] or 'default'}-{i}" for i, c in enumerate(CASES)])
def test_method_runs_and_artifact_reloads(local_farm, tiny_model, reference, tmp_path, method, fmt, params, expect):
    settings, db = local_farm
    spec = JobSpec(model=str(tiny_model), method=method, format=fmt, params=params,
                   calib=CalibSpec(samples=8, seqlen=128) if method in ("gptq", "awq") else None,
                   eval=EvalSpec(seqlen=128, windows=4, decode_tokens=8))
    job = run_in_process(settings, db, spec, f"m{abs(hash((method, fmt, str(params)))) % 10**10:010d}")
    assert job.state == "succeeded", job.error
    assert [e.stage for e in jobs.events(db, job.id) if e.state == "running" and e.stage][:1] == ["loading"]
    stages = [e.stage for e in jobs.events(db, job.id) if e.stage]
    assert stages[-2:] == ["evaluating", "uploading"] and "quantizing" in stages
    assert ("calibrating" in stages) == (method in ("gptq", "awq"))
    # A random Llama predicts about uniformly: its perplexity is near the size
    # of its vocabulary, and a faithful artifact's is the same.
    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    assert vocab / 2 < job.ppl_baseline < vocab * 2 and 0.95 < job.ppl_ratio < 1.05
    assert job.ppl_ratio == pytest.approx(job.ppl_quantized / job.ppl_baseline)
    assert job.quantize_seconds > 0 and job.artifact_bytes > 0
    assert job.tokens_per_s_baseline > 0 and job.tokens_per_s_quantized > 0

    artifact = Path(job.artifact_uri.removeprefix("file://"))
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["job"]["method"] == method and manifest["job"]["params"] == job.params
    assert manifest["library_versions"]["torch"] == metadata.version("torch")
    engine = {"compressed-tensors": "llmcompressor", "gptq": "gptqmodel", "awq": "gptqmodel", "bitsandbytes": "bitsandbytes"}[job.format]
    assert manifest["library_versions"][engine]
    assert manifest["metrics"]["ppl_ratio"] == pytest.approx(job.ppl_ratio)
    assert {f["path"] for f in manifest["files"]} >= {"config.json", "tokenizer.json"}
    # Reproducible: the artifact's one checksum, the seed and the device, in the manifest and the row.
    from api_client.app.artifacts import artifact_checksum

    assert manifest["artifact_sha256"] == artifact_checksum(manifest["files"]) == job.metrics["artifact_sha256"]
    assert manifest["environment"] == job.metrics["environment"] == {"seed": 0, "device": "cpu"}
    # Every accuracy figure has its interval; the serve speed names how it was timed.
    assert job.ppl_ratio_low <= job.ppl_ratio <= job.ppl_ratio_high
    assert job.kl_divergence is not None and job.metrics["kl_tokens"] == 4 * 127
    assert job.serve_method == "hf-static-eager" and job.serve_batch_tokens_per_s > 0
    # Every format here runs packed on a CPU, its kernel checked against the checkpoint.
    assert job.serve_kernel != "dense", job.metrics.get("serve_dense_reason")

    qc = flatten(json.loads((artifact / "config.json").read_text())["quantization_config"])
    for key, value in expect.items():
        assert qc[key] == value, (key, qc.get(key))

    tokens, original, original_greedy = reference
    bits = 8 if method == "int8" or params.get("bits") == 8 else 4
    same, error = agreement(original, logits(artifact, tokens))
    least_same, most_error = BOUNDS[bits]
    assert same >= least_same and error <= most_error, (same, error)
    generated = greedy(artifact)
    assert len(generated) == 8
    if bits == 8:
        assert generated[:4] == original_greedy[:4]
    assert not (settings.scratch_dir / "jobs" / job.id).exists()


def test_fp8_on_a_cpu_worker_fails_with_the_reason(local_farm, tiny_model, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a CPU worker, on any machine
    settings, db = local_farm
    job = run_in_process(settings, db, JobSpec(model=str(tiny_model), method="fp8", eval=EvalSpec(windows=1)), "fp8cpu000001")
    assert job.state == "failed"
    assert job.error == "fp8 needs an NVIDIA GPU of compute capability 8.9 or newer; this worker runs on the CPU"
    assert job.artifact_uri is None
    assert "Traceback" in job.error_traceback


@pytest.mark.gpu
def test_fp8_on_a_gpu_of_compute_capability_8_9(local_farm, tiny_model, reference):
    """FP8 where it runs (Ada, Hopper): the job succeeds on the GPU and its
    artifact, reloaded on the CPU, predicts what the original predicts."""
    import torch

    if torch.cuda.get_device_capability(0) < (8, 9):
        pytest.skip(f"{torch.cuda.get_device_name(0)} has compute capability below 8.9")
    settings, db = local_farm
    job = run_in_process(settings, db, JobSpec(model=str(tiny_model), method="fp8", eval=EvalSpec(seqlen=128, windows=4)),
                         "fp8gpu000001")
    assert job.state == "succeeded", job.error
    assert job.peak_vram_bytes > 0 and 0.95 < job.ppl_ratio < 1.05
    tokens, original, _ = reference
    same, error = agreement(original, logits(Path(job.artifact_uri.removeprefix("file://")), tokens))
    assert same >= BOUNDS[4][0] and error <= BOUNDS[4][1], (same, error)


def test_a_cancelled_job_is_not_started(local_farm, tiny_model):
    from api_client.infra.db import JobState

    settings, db = local_farm
    jobs.create(db, job_row(resolve(JobSpec(model=str(tiny_model), method="rtn")), "cancelled001", "tester", "qfarm.test"))
    jobs.transition(db, "cancelled001", expect=[JobState.QUEUED], state=JobState.CANCELLED)
    runner.execute("cancelled001", settings, worker="test@host")
    job = jobs.get(db, "cancelled001")
    assert job.state == "cancelled" and job.started_at is None and job.attempts == 0


def test_clearing_scratch_spares_a_running_jobs_files(tmp_path):
    """Leftovers of killed jobs go; files of a job still running (its lock
    held, here by a second worker sharing the directory) stay."""
    import fcntl

    scratch = tmp_path / "scratch"
    (scratch / "dead").mkdir(parents=True)
    (scratch / "dead.lock").touch()
    os.utime(scratch / "dead.lock", (time.time() - 2 * 86400,) * 2)  # a killed job's, days ago
    (scratch / "fresh.lock").touch()  # another worker's, about to be locked: stays
    (scratch / "running").mkdir()
    (scratch / "running" / "model.safetensors").write_bytes(b"x")
    (scratch / "new" / "model").mkdir(parents=True)  # from an attempt of "new" that was killed
    with open(scratch / "running.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with runner.job_directory(scratch, "new") as job_dir:
            assert sorted(p.name for p in scratch.iterdir()) == ["fresh.lock", "new", "new.lock", "running", "running.lock"]
            assert job_dir == scratch / "new" and not any(job_dir.iterdir())
            (job_dir / "artifact.safetensors").write_bytes(b"x" * 4096)
    # Gone at once (renamed), then deleted by a process of its own.
    assert "new" not in {p.name for p in scratch.iterdir()}
    deadline = time.monotonic() + 30
    while any(".discarded-" in p.name for p in scratch.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(p.name for p in scratch.iterdir()) == ["fresh.lock", "running", "running.lock"]


def live_tensor_bytes() -> int:
    import gc

    import torch

    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not obj.is_meta and obj.numel() > 1024:
            try:
                storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
            except RuntimeError:
                continue  # a fake tensor left by another test's tracing: it holds no memory
    return sum(storages.values())


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_quantizing_leaves_no_model_alive(tiny_model, tmp_path, method):
    """After llm-compressor quantized and saved, none of the model's tensors
    stay alive in the job process: its global session and the sequential
    pipeline's traced code kept them (on a GPU: memory every later figure of
    the job counted, 3.6 GiB for a W4 7B)."""
    import json

    from api_client.contract.catalog import get
    from worker import methods
    from worker.context import JobContext
    from worker.gpu import Device

    before = live_tensor_bytes()
    ctx = JobContext(
        job_id="leak", model_dir=tiny_model, output_dir=tmp_path / "out", scratch_dir=tmp_path, device=Device("cpu", None, "cpu"),
        calib=CalibSpec(samples=4, seqlen=64) if method == "gptq" else None, max_vram_bytes=None, weights="auto",
        model_bytes=sum(p.stat().st_size for p in tiny_model.glob("*.safetensors")), trust_remote_code=False,
        model_config=json.loads((tiny_model / "config.json").read_text()), on_stage=lambda *a: None, on_note=lambda m: None)
    (tmp_path / "out").mkdir()
    methods.quantize(method, ctx, get(method).parse_params({}, "compressed-tensors"), "compressed-tensors")
    assert (tmp_path / "out" / "config.json").exists()
    assert live_tensor_bytes() - before < 64 * 1024
