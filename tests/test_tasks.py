"""Task accuracy through lm-evaluation-harness: qfarm's builtin task, a
user's task directory run offline, and recovery recorded per task."""

import json

import pytest
from transformers import AutoTokenizer

from api_client.contract import lm_eval_tasks
from api_client.contract.corpus import builtin_text
from api_client.contract.spec import EvalSpec
from api_client.errors import QFarmError, SpecError
from worker import evaluators, texts
from worker.evaluators.task_accuracy import TaskRun
from worker.gpu import Device

CPU = Device("cpu", None, "cpu")


def test_builtin_task_is_the_same_every_time_and_well_formed():
    items = lm_eval_tasks.cloze_items(builtin_text("eval"))
    assert items == lm_eval_tasks.cloze_items(builtin_text("eval"))
    assert len(items) == lm_eval_tasks.BUILTIN_ITEMS
    for item in items:
        assert len(item["choices"]) == 4 and len({c.lower() for c in item["choices"]}) == 4
        answer = item["choices"][item["label"]]
        # The answer is the word the passage's last sentence ends with in the book.
        assert f"{item['context'][-60:]} {answer}" in " ".join(builtin_text("eval").split())
    # The answer's position is spread over the four choices, so a model that
    # prefers a position scores near chance.
    positions = [i["label"] for i in items]
    assert all(positions.count(k) > len(items) / 8 for k in range(4))


def write_task_dir(root, name="animals"):
    """A user's task: YAML naming its data file relative to the directory."""
    root.mkdir(parents=True)
    rows = [{"q": f"The {a} says", "choices": [s, "blue", "seven"], "label": 0}
            for a, s in (("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("owl", "hoot"))]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data.jsonl\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return root


def test_a_local_task_directory_runs_offline_and_records_recovery(tiny_model, tmp_path, monkeypatch):
    # No network: the hub and datasets would fail if anything reached out.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks_dir = write_task_dir(tmp_path / "tasks")
    builtin = lm_eval_tasks.write_builtin(tmp_path / "builtin", builtin_text("eval"))
    tok = AutoTokenizer.from_pretrained(tiny_model)
    windows = texts.token_windows(tok, texts.builtin_text("eval"), 64, 2)
    run = TaskRun(["animals", lm_eval_tasks.BUILTIN_TASK], [builtin, tasks_dir], limit=30, offline=True)
    figures = evaluators.run(evaluators.Inputs(CPU, tok, windows, None, 0, tmp_path / "s", tasks=run), tiny_model, tiny_model)
    tasks = figures.metrics["tasks"]
    assert set(tasks) == {"animals", lm_eval_tasks.BUILTIN_TASK}
    assert tasks["animals"]["items"] == 5 and tasks[lm_eval_tasks.BUILTIN_TASK]["items"] == 30
    for t in tasks.values():
        assert t["metric"] in ("acc", "acc_norm") and 0 <= t["quantized"] <= 1
        # The same model on both sides: all of its accuracy is kept.
        assert t["baseline"] == t["quantized"]
        if t["baseline"]:
            assert t["recovery"] == pytest.approx(1.0)
    assert figures.columns["task_recovery"] == pytest.approx(1.0)


def test_task_options_are_checked_before_anything_is_queued(tmp_path):
    with pytest.raises(SpecError, match="not a task name"):
        EvalSpec(tasks=["arc easy"]).validate()
    with pytest.raises(SpecError, match="needs --tasks"):
        EvalSpec(tasks_dir=str(tmp_path)).validate()
    with pytest.raises(SpecError, match="local directory"):
        EvalSpec(tasks=["a"], tasks_dir="s3://bucket/tasks").validate()
    with pytest.raises(SpecError, match="--limit"):
        EvalSpec(tasks_limit=5).validate()
    spec = EvalSpec(tasks=["builtin"])
    spec.validate()
    assert spec.tasks == [lm_eval_tasks.BUILTIN_TASK]

    with pytest.raises(SpecError, match="no task YAML"):
        lm_eval_tasks.check_tasks_dir(str(tmp_path), ["x"])
    write_task_dir(tmp_path / "t")
    with pytest.raises(SpecError, match="defines animals, not anmals"):
        lm_eval_tasks.check_tasks_dir(str(tmp_path / "t"), ["anmals"])
    assert lm_eval_tasks.check_tasks_dir(str(tmp_path / "t"), ["animals"]) == (tmp_path / "t").resolve()
    (tmp_path / "t" / "leak").symlink_to("/etc/passwd")
    with pytest.raises(SpecError, match="links outside"):
        lm_eval_tasks.check_tasks_dir(str(tmp_path / "t"), ["animals"])


def test_a_task_directory_that_runs_code_needs_remote_code(tmp_path):
    """lm-eval imports a task's Python (`!function`, `class:`, a utils.py):
    code that would run on the worker, so only with --allow-remote-code."""
    d = write_task_dir(tmp_path / "t")
    (d / "animals.yaml").write_text((d / "animals.yaml").read_text().replace("doc_to_text: '{{q}}'", "doc_to_text: !function utils.text"))
    (d / "utils.py").write_text("import os\ndef text(doc):\n    return os.environ['AWS_SECRET_ACCESS_KEY']\n")
    with pytest.raises(SpecError, match="--allow-remote-code"):
        lm_eval_tasks.check_tasks_dir(str(d), ["animals"])
    assert lm_eval_tasks.check_tasks_dir(str(d), ["animals"], allow_code=True)
    (d / "utils.py").unlink()
    with pytest.raises(SpecError, match="!function utils.text names Python code"):
        lm_eval_tasks.check_tasks_dir(str(d), ["animals"])

    # On the worker too: a message that did not come through `qfarm submit`.
    import tarfile

    from worker import lm_eval_inputs

    archive = tmp_path / "tasks.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(d, arcname=".")
    with pytest.raises(QFarmError, match="runs code"):
        lm_eval_inputs.prepare(EvalSpec(tasks=["animals"], tasks_dir=archive.as_uri()), tmp_path / "job", allow_code=False)


def test_a_task_that_cannot_run_is_recorded_and_the_other_figures_stand(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    windows = texts.token_windows(tok, texts.builtin_text("eval"), 64, 2)
    run = TaskRun(["no_such_task"], [], offline=True)
    figures = evaluators.run(evaluators.Inputs(CPU, tok, windows, None, 0, tmp_path / "s", tasks=run), tiny_model, tiny_model)
    assert "no_such_task" in figures.metrics["tasks_error"]
    assert "tasks" not in figures.metrics and figures.columns.get("task_recovery") is None
    assert figures.columns["ppl_ratio"] == 1.0 and figures.columns["serve_kernel"] == "dense"
