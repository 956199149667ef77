"""Task accuracy through lm-evaluation-harness (`--tasks`), on the reference
load of each model, in memory: lm-eval's HFLM wraps the loaded model, and
tasks come from lm-eval's registry (the hub must be reachable) or from
directories on local disk (the builtin task, a user's --tasks-dir), which
run offline.

Per task: both scores, the metric, the number of items and the recovery
(quantized / original, as llm-compressor's recovery gates compute it). The
headline metric of a task is acc_norm where the task reports it (length-
normalized, what harness leaderboards use for multiple choice), else acc,
else the first it reports.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.evaluators import Evaluator, Figures, Inputs, Loaded, register

HEADLINE_ORDER = ("acc_norm", "acc", "exact_match", "f1")
# Numbers lm-eval reports beside the scores.
_NOT_SCORES = {"sample_len", "sample_count", "samples"}


@dataclass
class TaskRun:
    names: list[str]
    # Directories of task YAML to add to lm-eval's registry.
    include: list[Path] = field(default_factory=list)
    limit: int | None = None
    # Every task is local: keep datasets and the hub offline.
    offline: bool = False
    _manager: Any = field(default=None, init=False, repr=False, compare=False)

    def manager(self):
        """One lm-eval TaskManager for both models of a job. Indexing
        lm-eval's own registry (about 14,700 task configs) took 15 s on two
        cores, once per model; a run whose tasks are all local does not
        index it at all."""
        if self._manager is None:
            from lm_eval.tasks import TaskManager

            self._manager = TaskManager(include_path=[str(p) for p in self.include] or None,
                                        include_defaults=not self.offline, verbosity="ERROR")
        return self._manager


@register
class Tasks(Evaluator):
    name = "tasks"
    torch_model = True

    def wanted(self, inputs: Inputs) -> bool:
        return bool(inputs.tasks and inputs.tasks.names)

    def measure(self, loaded: Loaded, inputs: Inputs, load: dict[str, Any]) -> dict[str, Any]:
        run: TaskRun = inputs.tasks
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        model = loaded.model
        lm = HFLM(pretrained=model, tokenizer=inputs.tokenizer, device=str(model.device),
                  batch_size=32 if inputs.device.is_cuda else 8)
        with _offline(run.offline), _working_dir(run.include[-1] if run.include else None):
            result = simple_evaluate(
                model=lm, tasks=run.names, limit=run.limit, bootstrap_iters=0, log_samples=False,
                task_manager=run.manager(),
                verbosity="ERROR",
            )
        scores: dict[str, dict[str, Any]] = {}
        for task, values in (result or {}).get("results", {}).items():
            metrics = {k.split(",")[0]: v for k, v in values.items()
                       if isinstance(v, (int, float)) and "_stderr" not in k and k.split(",")[0] not in _NOT_SCORES}
            if not metrics:
                continue
            items = (result.get("n-samples", {}).get(task) or {}).get("effective")
            scores[task] = {"scores": metrics, "items": items}
        return scores

    def figures(self, baseline: dict[str, Any] | None, quantized: dict[str, Any]) -> Figures:
        tasks: dict[str, dict[str, Any]] = {}
        for task, q in quantized.items():
            metric = next((m for m in HEADLINE_ORDER if m in q["scores"]), next(iter(q["scores"])))
            entry: dict[str, Any] = {"metric": metric, "quantized": q["scores"][metric], "items": q["items"],
                                     "quantized_scores": q["scores"]}
            b = (baseline or {}).get(task)
            if b and metric in b["scores"]:
                entry.update(baseline=b["scores"][metric], baseline_scores=b["scores"])
                entry["recovery"] = recovery(b["scores"][metric], q["scores"][metric])
            tasks[task] = entry
        recoveries = [t["recovery"] for t in tasks.values() if t.get("recovery") is not None]
        return Figures(columns=dict(task_recovery=sum(recoveries) / len(recoveries) if recoveries else None),
                       metrics=dict(tasks=tasks))


def recovery(baseline: float, quantized: float) -> float | None:
    """Quantized score as a fraction of the original's (1.0: all kept)."""
    return quantized / baseline if baseline else None


@contextmanager
def _offline(on: bool):
    """HF_DATASETS_OFFLINE / HF_HUB_OFFLINE for this call. `datasets` reads
    them when imported, and the engines import it first: its config module's
    flags are set too."""
    if not on:
        yield
        return
    names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update(dict.fromkeys(names, "1"))
    flags: dict[str, Any] = {}
    try:
        import datasets.config as dconfig

        for attr in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            if hasattr(dconfig, attr):
                flags[attr] = getattr(dconfig, attr)
                setattr(dconfig, attr, True)
    except ImportError:
        dconfig = None
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
        for attr, v in flags.items():
            setattr(dconfig, attr, v)


@contextmanager
def _working_dir(path: Path | None):
    """A user's task YAML names its data files relative to its directory."""
    if path is None:
        yield
        return
    cwd = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(cwd)
