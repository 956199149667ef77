"""Artifacts checked for what they are worth, not only that they load: on
the trained 13.8M-parameter reference Llama (../shared/refmodel), 8-bit
artifacts keep perplexity within 1% and greedy text identical in its first
tokens, and a 4-bit one within 10%. A broken artifact (garbage weights, the
wrong scales) fails these where a random model's perplexity could not tell."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from api_client.app.client import job_row
from api_client.config import Settings
from api_client.contract.spec import EvalSpec, JobSpec, resolve
from api_client.infra.db import Database, jobs
from worker import runner

REFMODEL = Path(__file__).resolve().parents[2] / "shared" / "refmodel"
PROMPT = "The school-master opened the door and"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not REFMODEL.is_dir(), reason="../shared/refmodel is not beside this checkout")]


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QFARM_HOME", str(home))
        mp.setenv("QFARM_DATABASE_URL", f"sqlite:///{home / 'qfarm.db'}")
        mp.setenv("QFARM_STORAGE_URL", (home / "artifacts").as_uri())
        mp.setenv("QFARM_USER", "tester")
        settings = Settings.from_env()
        db = Database(settings.database_url)
        db.upgrade()
        yield settings, db
        db.dispose()


@pytest.fixture(scope="module")
def reference_tokens() -> list[int]:
    return greedy(REFMODEL)


def greedy(path: Path, n: int = 8) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu")
    tok = AutoTokenizer.from_pretrained(path)
    inputs = tok(PROMPT, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("method,params,bound,same_tokens", [
    ("rtn", {"bits": 8, "group_size": 128}, 1.01, True),
    ("int8", {}, 1.01, True),
    ("rtn", {"bits": 4, "group_size": 128}, 1.10, False),
    # llama.cpp's converter's Q8_0, measured in the worker's GGUF runtime.
    ("gguf", {}, 1.01, False),
])
def test_quantized_refmodel_keeps_its_accuracy(farm, reference_tokens, method, params, bound, same_tokens):
    settings, db = farm
    # The original is measured for the ratio only (as in all but one member
    # of a compare group): its serving figures are not what this test checks.
    spec = JobSpec(model=str(REFMODEL), method=method, params=params, format="q8_0" if method == "gguf" else None,
                   eval=EvalSpec(seqlen=256, windows=8, decode_tokens=4, baseline="perplexity"))
    job_id = f"acc{method}{params.get('bits', 8)}".ljust(12, "0")
    jobs.create(db, job_row(resolve(spec), job_id, "tester", "qfarm.test"))
    runner.execute(job_id, settings, worker="test@host")
    job = jobs.get(db, job_id)
    assert job.state == "succeeded", job.error
    # The reference's own perplexity on this text is ~108 (shared/README.md).
    assert 60 < job.ppl_baseline < 200
    assert 1 / bound < job.ppl_ratio < bound, job.ppl_ratio
    if same_tokens:
        artifact = Path(job.artifact_uri.removeprefix("file://"))
        assert greedy(artifact) == reference_tokens
