"""The same job twice on the same device writes the same artifact: every
file, and so the artifact's one checksum, equal (docs/methods.md, "Reproducible").
On a CPU every method is deterministic; what differed was a path of the
worker that GPTQModel wrote into its configs."""

import pytest

from api_client.app import artifacts
from api_client.contract import catalog, checkpoint
from api_client.contract.spec import CalibSpec, defaults_for
from api_client.infra.storage import sha256_file
from worker import methods
from worker.context import JobContext
from worker.gpu import Device
from worker.versions import seed_everything

CPU = Device("cpu", None, "cpu")
SLOW = {("gptq", None), ("awq", None)}  # llm-compressor's calibrated methods: 15-60 s each on two cores
CASES = [("rtn", None), ("nf4", None), ("fp4", None), ("int8", None), ("gptq", "gptq"), ("awq", "awq"), *sorted(SLOW)]


def quantize(model, method, fmt, job_dir):
    """The method as a job runs it, in a job directory of its own (named by
    its job id, as the runner names it)."""
    spec = catalog.get(method)
    fmt = fmt or spec.formats[0]
    info = checkpoint.inspect(model)
    (job_dir / "artifact").mkdir(parents=True)
    ctx = JobContext(job_id=job_dir.name, model_dir=model, output_dir=job_dir / "artifact", scratch_dir=job_dir,
                     device=CPU, calib=CalibSpec(samples=8, seqlen=128).resolved(defaults_for(False)) if spec.calibrated else None,
                     max_vram_bytes=None, weights="auto", model_bytes=info.weight_bytes, trust_remote_code=False,
                     model_config=info.config, on_stage=lambda *a: None, on_note=lambda *a: None)
    seed_everything()
    methods.quantize(method, ctx, spec.parse_params({}, fmt), fmt)
    files = [{"path": p.relative_to(ctx.output_dir).as_posix(), "sha256": sha256_file(p)}
             for p in artifacts.artifact_files(ctx.output_dir)]
    return artifacts.artifact_checksum(files), {f["path"]: f["sha256"] for f in files}


@pytest.mark.parametrize("method,fmt", [pytest.param(m, f, marks=[pytest.mark.slow] if (m, f) in SLOW else [])
                                        for m, f in CASES], ids=[f"{m}-{f or 'default'}" for m, f in CASES])
def test_the_same_job_twice_writes_the_same_artifact(tiny_model, tmp_path, monkeypatch, method, fmt):
    monkeypatch.chdir(tmp_path)  # GPTQModel writes its logs/ there, as a job's runs in its own directory
    first, first_files = quantize(tiny_model, method, fmt, tmp_path / "job0aaaa")
    second, second_files = quantize(tiny_model, method, fmt, tmp_path / "job1bbbb")
    assert [p for p in first_files if first_files[p] != second_files.get(p)] == []
    assert first == second and len(first) == 64
    assert any(p.endswith(".safetensors") for p in first_files)


def test_the_checksum_names_the_files_not_their_order():
    a = [{"path": "config.json", "sha256": "1" * 64}, {"path": "model.safetensors", "sha256": "2" * 64}]
    assert artifacts.artifact_checksum(a) == artifacts.artifact_checksum(list(reversed(a)))
    assert artifacts.artifact_checksum(a) != artifacts.artifact_checksum([a[0], {**a[1], "sha256": "3" * 64}])
    assert artifacts.artifact_checksum(a) != artifacts.artifact_checksum([a[0], {**a[1], "path": "other.safetensors"}])
