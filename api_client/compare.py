"""The table `qfarm compare` prints: one row per method of a group, the
original model as a row of its own (measured once, by the member that
measured its full baseline), and the row it recommends: the best accuracy
among the members that succeeded within the group's size and serve-VRAM
limits. Accuracy is task recovery where every candidate has it, else the
perplexity ratio (lower is better)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from api_client.db.models import Job, JobGroup, JobState
from api_client.render import size


@dataclass
class Row:
    label: str
    job_id: str | None
    state: str
    format: str | None = None
    ppl_ratio: float | None = None
    # The share of the decoder's weights the artifact stores quantized.
    quantized_fraction: float | None = None
    task_recovery: float | None = None
    artifact_bytes: int | None = None
    weights_bytes: int | None = None
    serve_vram_bytes: int | None = None
    serve_kernel: str | None = None
    quantize_seconds: float | None = None
    serve_tokens_per_s: float | None = None
    # Some weights stayed in CPU memory while serving (under --max-vram).
    serve_offloaded: bool = False
    error: str | None = None
    recommended: bool = False
    # Why the row cannot be recommended (outside a limit, failed...).
    excluded: str | None = None
    # Why its serve VRAM is unknown, where a limit would need it.
    excluded_vram: str | None = None
    tasks: dict[str, Any] = field(default_factory=dict)


@dataclass
class Comparison:
    group: str
    model: str
    limits: dict[str, Any]
    rows: list[Row]
    finished: bool
    recommended: str | None
    why: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def baseline_member(members: list[Job]) -> Job | None:
    """The member that measured the original model in full."""
    full = [j for j in members if (j.eval or {}).get("baseline", "full") == "full"]
    done = [j for j in full if j.state == JobState.SUCCEEDED.value]
    return next(iter(done or full), None)


def compare(group: JobGroup, members: list[Job]) -> Comparison:
    base_job = baseline_member(members)
    base_tasks = dict(((base_job.metrics or {}).get("tasks") or {}).items()) if base_job else {}
    rows = []
    if base_job is not None:
        done = base_job.state == JobState.SUCCEEDED.value
        rows.append(Row(
            label="original", job_id=base_job.id, state=base_job.state if not done else "measured",
            format=(base_job.metrics or {}).get("serve_kernel_baseline") or "dense",
            ppl_ratio=1.0 if done else None, task_recovery=1.0 if done and base_tasks else None,
            artifact_bytes=base_job.model_bytes, weights_bytes=base_job.weights_bytes_baseline,
            serve_vram_bytes=base_job.serve_vram_baseline_bytes, serve_kernel="dense" if done else None,
            serve_tokens_per_s=base_job.serve_tokens_per_s_baseline, excluded="the original model",
            serve_offloaded=bool((base_job.metrics or {}).get("serve_offloaded_baseline")),
            tasks={n: {"metric": t["metric"], "score": t.get("baseline")} for n, t in base_tasks.items()},
        ))
    for job in members:
        rows.append(_member_row(job, base_tasks))
    _recommend(rows, group.limits or {})
    chosen = next((r for r in rows if r.recommended), None)
    finished = all(JobState(j.state).terminal for j in members)
    return Comparison(group=group.id, model=group.model, limits=group.limits or {}, rows=rows, finished=finished,
                      recommended=chosen.label if chosen else None, why=_why(rows, chosen, group.limits or {}, finished))


def _member_row(job: Job, base_tasks: dict[str, Any]) -> Row:
    from api_client import catalog

    row = Row(label=catalog.label_of(job.method, job.format), job_id=job.id, state=job.state, format=job.format,
              ppl_ratio=job.ppl_ratio, quantized_fraction=job.quantized_fraction,
              artifact_bytes=job.artifact_bytes, weights_bytes=job.weights_bytes, serve_vram_bytes=job.serve_vram_bytes,
              serve_kernel=job.serve_kernel, quantize_seconds=job.quantize_seconds,
              serve_tokens_per_s=job.serve_tokens_per_s, error=job.error, task_recovery=job.task_recovery,
              serve_offloaded=bool((job.metrics or {}).get("serve_offloaded")))
    serving_error = (job.metrics or {}).get("serving_error")
    recoveries = []
    for name, t in ((job.metrics or {}).get("tasks") or {}).items():
        recovery = t.get("recovery")
        base = base_tasks.get(name)
        if recovery is None and base and base.get("baseline") and t["metric"] == base["metric"]:
            # Measured against the group's one baseline.
            recovery = t["quantized"] / base["baseline"]
        row.tasks[name] = {"metric": t["metric"], "score": t["quantized"], "recovery": recovery}
        if recovery is not None:
            recoveries.append(recovery)
    if row.task_recovery is None and recoveries:
        row.task_recovery = sum(recoveries) / len(recoveries)
    if serving_error and row.serve_vram_bytes is None:
        row.excluded_vram = f"serve VRAM not measured: {serving_error}"
    elif row.serve_vram_bytes is None and job.serve_kernel and job.gpu_name not in (None, "cpu"):
        # A GGUF file served by llama.cpp's CPU build on a GPU worker.
        row.excluded_vram = f"serve VRAM not measured: its serve path ({job.serve_kernel}) holds no GPU memory"
    return row


def _recommend(rows: list[Row], limits: dict[str, Any]) -> None:
    max_size, max_vram = limits.get("max_size_bytes"), limits.get("max_vram_bytes")
    candidates = []
    for row in rows:
        if row.excluded:
            continue
        if row.state != JobState.SUCCEEDED.value:
            row.excluded = row.error or row.state
        elif max_size and row.artifact_bytes is not None and row.artifact_bytes > max_size:
            row.excluded = f"artifact {row.artifact_bytes / 2**30:.2f} GiB > --max-size"
        elif max_vram and row.serve_vram_bytes is None:
            row.excluded = row.excluded_vram or "serve VRAM not measured (ran on a CPU worker)"
        elif max_vram and row.serve_offloaded:
            row.excluded = "its weights did not fit the GPU while serving (partly offloaded to CPU memory)"
        elif max_vram and row.serve_vram_bytes is not None and row.serve_vram_bytes > max_vram:
            row.excluded = f"serve VRAM {row.serve_vram_bytes / 2**30:.2f} GiB > --max-vram"
        else:
            candidates.append(row)
    if not candidates:
        return
    by_tasks = all(r.task_recovery is not None for r in candidates)

    def score(r: Row) -> tuple[float, float, float]:
        # Ties go to the lower perplexity ratio, then to the smaller weights.
        ratio = r.ppl_ratio or float("inf")
        return -(r.task_recovery or 0) if by_tasks else ratio, ratio, r.weights_bytes or r.artifact_bytes or 0

    min(candidates, key=score).recommended = True


def _why(rows: list[Row], chosen: Row | None, limits: dict[str, Any], finished: bool) -> str:
    limit_text = " and ".join(f"{name} {size(limits[key])}" for key, name in
                              (("max_size_bytes", "size"), ("max_vram_bytes", "serve VRAM")) if limits.get(key))
    within = f" within {limit_text}" if limit_text else ""
    pending = "" if finished else " (so far: members are still running)"
    if chosen is None:
        return f"no member succeeded{within}{pending}"
    others = [r for r in rows if r.excluded is None and not r.recommended]
    if chosen.task_recovery is not None and all(r.task_recovery is not None for r in others):
        accuracy = f"the best task recovery ({chosen.task_recovery * 100:.1f} %)"
    else:
        accuracy = f"the lowest perplexity ratio ({chosen.ppl_ratio:.4f})"
    return f"{chosen.label}: {accuracy} of the {len(others) + 1} members that succeeded{within}{pending}"
