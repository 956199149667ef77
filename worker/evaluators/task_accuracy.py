"""Task accuracy through lm-evaluation-harness (`--tasks`), on the reference
load of each model, in memory: lm-eval's HFLM wraps the loaded model, and
tasks come from lm-eval's registry (the hub must be reachable) or from
directories on local disk (the builtin task, a user's --tasks-dir), which
run offline.

A directory's YAML is never handed to lm-eval's loader: qfarm reads it as
data (api_client/contract/task_yaml.py) and puts the finished configs into the task
index, and lm-eval renders their templates in Jinja's sandbox while this
evaluator runs, from an empty working directory.

Per task: both scores with their standard errors, the metric, the number
of items and the recovery (quantized / original, as llm-compressor's
recovery gates compute it) with its standard error. The headline metric of a
task is acc_norm where the task reports it (length-normalized, what harness
leaderboards use for multiple choice), else acc, else the first it reports.

The standard errors come from the per-item scores (lm-eval's log_samples),
not from lm-eval's aggregation: with `bootstrap_iters=0` lm-eval reports
every `_stderr` as "N/A", even for a mean, and with more it bootstraps
non-mean metrics in a multiprocessing pool forked from the job process. A
mean metric's standard error is lm-eval's own `mean_stderr` of the item
scores; the recovery's is paired where both models ran in this job (both
answered the same items, api_client/contract/stats.py), which is much tighter than
adding two independent errors. A metric whose score is not the mean of its
item scores (a corpus F1, BLEU) has none, and says so (`stderr_reason`).
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api_client.contract import stats, task_yaml
from api_client.errors import QFarmError
from worker.evaluators import Evaluator, Figures, Inputs, Loaded, register
from worker.texts import empty_working_dir

HEADLINE_ORDER = ("acc_norm", "acc", "exact_match", "f1")
# Numbers lm-eval reports beside the scores.
_NOT_SCORES = {"sample_len", "sample_count", "samples"}


@dataclass
class TaskRun:
    names: list[str]
    # Directories of task YAML (read through api_client/contract/task_yaml.py).
    include: list[Path] = field(default_factory=list)
    limit: int | None = None
    # Every task is local: keep datasets and the hub offline.
    offline: bool = False
    # The job and this worker allow remote code: a directory's `!function`
    # and `class:` are imported from it.
    allow_code: bool = False
    _manager: Any = field(default=None, init=False, repr=False, compare=False)

    def manager(self):
        """One lm-eval TaskManager for both models of a job. Indexing
        lm-eval's own registry (about 14,700 task configs) took 15 s on two
        cores, once per model; a run whose tasks are all local does not
        index it at all. The directories' configs go into its index as
        finished configs (an entry without a YAML path), so lm-eval reads
        no file of theirs."""
        if self._manager is None:
            from lm_eval.tasks import TaskManager
            from lm_eval.tasks._index import TaskIndex

            manager = TaskManager(include_path=None, include_defaults=not self.offline, verbosity="ERROR")
            entries: dict[str, Any] = {}
            for directory in self.include:
                loaded = task_yaml.load(directory, self.allow_code)
                for cfg in loaded.configs:
                    _check_metrics(cfg, self.allow_code)
                    cfg = _imported(cfg, loaded.root) if loaded.code else cfg
                    TaskIndex.process_cfg(cfg, directory, entries)
            for entry in entries.values():
                entry.yaml_path = None  # built from entry.cfg, never read again
            manager.task_index.update(entries)
            self._manager = manager
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
        with _offline(run.offline), sandboxed_templates(), empty_working_dir():
            result = simple_evaluate(
                model=lm, tasks=run.names, limit=run.limit, bootstrap_iters=0, log_samples=True,
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
            scores[task] = {"scores": metrics, "items": items,
                            "per_item": item_scores(result.get("samples", {}).get(task) or [], metrics)}
        return scores

    def figures(self, baseline: dict[str, Any] | None, quantized: dict[str, Any]) -> Figures:
        tasks: dict[str, dict[str, Any]] = {}
        for task, q in quantized.items():
            metric = next((m for m in HEADLINE_ORDER if m in q["scores"]), next(iter(q["scores"])))
            q_items = q["per_item"].get(metric)
            entry: dict[str, Any] = {"metric": metric, "quantized": q["scores"][metric], "items": q["items"],
                                     "quantized_scores": q["scores"], "quantized_stderr": _stderr(q_items),
                                     "quantized_per_item": stats.encode_scores(q_items) if q_items else None}
            if q_items is None:
                entry["stderr_reason"] = f"{metric} is not the mean of per-item scores (no standard error)"
            b = (baseline or {}).get(task)
            if b and metric in b["scores"]:
                b_items = b["per_item"].get(metric)
                entry.update(baseline=b["scores"][metric], baseline_scores=b["scores"], baseline_stderr=_stderr(b_items),
                             baseline_per_item=stats.encode_scores(b_items) if b_items else None)
                entry.update(stats.recovery(b["scores"][metric], entry["baseline_stderr"], b_items,
                                            q["scores"][metric], entry["quantized_stderr"], q_items))
            tasks[task] = entry
        recovery, stderr = task_recovery(tasks)
        return Figures(columns=dict(task_recovery=recovery, task_recovery_stderr=stderr), metrics=dict(tasks=tasks))


def item_scores(samples: list[dict[str, Any]], scores: dict[str, float]) -> dict[str, list[float]]:
    """Each metric's per-item scores in document order, for the metrics whose
    reported score is their mean (what a standard error of the mean fits)."""
    ordered = sorted(samples, key=lambda s: s.get("doc_id", 0))
    out = {}
    for metric, score in scores.items():
        values = [s.get(metric) for s in ordered]
        if not values or not all(isinstance(v, (int, float)) for v in values):
            continue  # a corpus metric keeps tuples or strings per item
        numbers = [float(v) for v in values]  # type: ignore[arg-type]  # every one is a number (checked above)
        if abs(stats.mean(numbers) - float(score)) <= 1e-9 * max(1.0, abs(float(score))):
            out[metric] = numbers
    return out


def _stderr(items: list[float] | None) -> float | None:
    return stats.mean_stderr(items) if items else None


def task_recovery(tasks: dict[str, dict[str, Any]]) -> tuple[float | None, float | None]:
    """The job's task recovery, the mean over its tasks, and its standard
    error (the tasks' items are independent samples)."""
    estimates = [(t["recovery"], t.get("recovery_stderr")) for t in tasks.values() if t.get("recovery") is not None]
    if not estimates:
        return None, None
    return stats.mean_of(estimates)


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
def sandboxed_templates():
    """lm-eval renders every task template (doc_to_text, doc_to_choice,
    doc_to_target, descriptions, few-shot prefixes, ...) through one module
    global, `lm_eval.utils.env`, a plain Jinja environment in which a
    template is Python (`{{ lipsum.__globals__['os'].popen(...) }}`). For the
    evaluation it is Jinja's immutable sandbox with lm-eval's own settings
    and filter: a template that reaches Python internals raises
    SecurityError, recorded as the job's tasks error."""
    from jinja2 import BaseLoader, StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from lm_eval import utils

    sandbox = ImmutableSandboxedEnvironment(loader=BaseLoader(), undefined=StrictUndefined, keep_trailing_newline=True)
    sandbox.filters["regex_replace"] = utils.regex_replace
    plain, utils.env = utils.env, sandbox
    try:
        yield
    finally:
        utils.env = plain


def _check_metrics(cfg: dict[str, Any], allow_code: bool) -> None:
    """A metric lm-eval does not know is fetched from the hub by the
    `evaluate` library and run: code, unless the job may run it."""
    import lm_eval.api.metrics  # noqa: F401 - registers lm-eval's metrics
    from lm_eval.api.registry import metric_registry

    for node in _mappings(cfg):
        for metric in node.get("metric_list") or []:
            name = metric.get("metric") if isinstance(metric, dict) else None
            if isinstance(name, str) and name not in metric_registry and not allow_code:
                raise QFarmError(f"task {cfg.get('task') or cfg.get('group')}: metric {name!r} is not one of lm-eval's "
                                 f"({', '.join(sorted(metric_registry))}): it would be fetched from the hub and run")


def _mappings(node: Any):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _mappings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _mappings(v)


def _imported(node: Any, root: Path) -> Any:
    """The config with each `!function module.name` (a job that may run
    code) imported from the task directory, as lm-eval would."""
    if isinstance(node, task_yaml.FunctionRef):
        module, _, name = node.name.rpartition(".")
        path = (node.base / f"{module.replace('.', '/')}.py").resolve()
        if not module or not path.is_relative_to(root) or not path.is_file():
            raise QFarmError(f"!function {node.name}: no module {module}.py in the task directory")
        spec = importlib.util.spec_from_file_location(f"qfarm_task_{path.stem}_{abs(hash(path))}", path)
        if spec is None or spec.loader is None:
            raise QFarmError(f"!function {node.name}: {path.name} cannot be imported")
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return getattr(loaded, name)
    if isinstance(node, dict):
        return {k: _imported(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_imported(v, root) for v in node]
    return node
