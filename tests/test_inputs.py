"""A job's inputs are looked at once: the model's checkpoint inspected, each
text read, the task directory checked, whatever the number of checks or of
compare members that use them (api_client/contract/inputs.py)."""

from collections import Counter

import pytest

from api_client.contract import checkpoint, corpus, inputs, lm_eval_tasks
from api_client.contract.spec import CalibSpec, EvalSpec, JobSpec, resolve
from api_client.errors import SpecError
from tests.test_tasks import write_task_dir


@pytest.fixture
def looks(monkeypatch):
    """How many times each input was inspected, read or checked."""
    seen: Counter = Counter()

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            seen[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(checkpoint, "inspect", counted("checkpoint", checkpoint.inspect))
    monkeypatch.setattr(inputs, "read_bounded", counted("text file", corpus.read_bounded))
    monkeypatch.setattr(lm_eval_tasks, "check_tasks_dir", counted("task directory", lm_eval_tasks.check_tasks_dir))
    return seen


def _text(tmp_path, name):
    path = tmp_path / name
    path.write_text(" ".join(f"word{i % 97}" for i in range(20_000)) + "\n")
    return path


def test_one_job_reads_each_input_once(tiny_model, tmp_path, looks):
    calib, evals = _text(tmp_path, "calib.txt"), _text(tmp_path, "eval.txt")
    tasks = write_task_dir(tmp_path / "tasks")
    r = resolve(JobSpec(model=str(tiny_model), method="gptq", calib=CalibSpec(source=str(calib), samples=4, seqlen=64),
                        eval=EvalSpec(source=str(evals), seqlen=64, tasks=["animals"], tasks_dir=str(tasks))))
    assert looks == {"checkpoint": 1, "text file": 2, "task directory": 1}
    assert r.inputs is not None
    assert (r.model_kind, r.inputs.calib.path, r.inputs.eval.path) == ("local", calib.resolve(), evals.resolve())
    assert r.eval.tasks_dir == str(tasks.resolve())


def test_a_compare_group_reads_its_inputs_once_for_all_members(qfarm_env, tiny_model, tmp_path, looks):
    from api_client import Client
    from api_client.infra.db import Database

    client = Client()
    Database(client.settings.database_url).upgrade()
    calib = _text(tmp_path, "calib.txt")
    base = JobSpec(model=str(tiny_model), method="rtn", calib=CalibSpec(source=str(calib)), eval=EvalSpec(seqlen=64))
    _, members = client.compare(str(tiny_model), ["gptq", "awq", "rtn", "nf4"], base)
    assert len(members) == 4
    assert looks == {"checkpoint": 1, "text file": 1}
    # The calibrated members carry the uploaded text; the others none.
    assert {j.method: bool(j.calib) for j in members} == {"gptq": True, "awq": True, "rtn": False, "nf4": False}


def test_the_options_are_checked_before_any_input_is_read(tiny_model, tmp_path, looks):
    with pytest.raises(SpecError, match="--calib-samples must be between 1 and 100000"):
        resolve(JobSpec(model=str(tiny_model), method="gptq", calib=CalibSpec(source=str(tmp_path / "x.txt"), samples=0)))
    assert looks == {}
