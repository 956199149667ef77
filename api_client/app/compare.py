"""The table `qfarm compare` prints: one row per method of a group, the
original model as a row of its own (measured once, by the member that
measured its full baseline), and the row it recommends.

Accuracy is task recovery where every candidate has it, else the perplexity
ratio (lower is better), each with its 95 % interval (api_client/contract/stats.py).
The members that succeeded within the group's size and serve-VRAM limits
and whose interval overlaps the best one's are tied: their difference is
within the noise of the measurement, so accuracy cannot choose between them.
Among the tied the recommendation is the smallest (measured serve VRAM, or
the artifact's size when the group has --max-size), then, of those as small,
the fastest (decode at batch 1 as a server runs it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from api_client.contract import stats
from api_client.contract.figures import size
from api_client.infra.db.models import Job, JobGroup, JobState

# Sizes within this share of each other are as small: speed decides between them.
SAME_SIZE = 0.01


@dataclass
class Row:
    label: str
    job_id: str | None
    state: str
    format: str | None = None
    ppl_ratio: float | None = None
    # The share of the decoder's weights the artifact stores quantized.
    quantized_fraction: float | None = None
    # The perplexity ratio's 95 % interval (paired bootstrap over windows).
    ppl_ratio_low: float | None = None
    ppl_ratio_high: float | None = None
    task_recovery: float | None = None
    task_recovery_stderr: float | None = None
    kl_divergence: float | None = None
    # The mean's 95 % interval (bootstrap over windows), and the 99th percentile.
    kl_interval: list[float] | None = None
    kl_divergence_p99: float | None = None
    artifact_bytes: int | None = None
    weights_bytes: int | None = None
    serve_vram_bytes: int | None = None
    serve_kernel: str | None = None
    # How the speeds were timed (hf-static-cudagraph, hf-static-eager).
    serve_method: str | None = None
    quantize_seconds: float | None = None
    serve_tokens_per_s: float | None = None
    serve_batch_tokens_per_s: float | None = None
    serve_prefill_tokens_per_s: float | None = None
    # Some weights stayed in CPU memory while serving (under --max-vram).
    serve_offloaded: bool = False
    error: str | None = None
    recommended: bool = False
    # Its accuracy intervals overlap the best ones' (within noise of them).
    tied: bool = False
    # The accuracy figure on which it is clear of the best (not tied).
    untied_by: str | None = None
    # The 95 % interval the recommendation compared ([low, high]).
    accuracy_interval: list[float] | None = None
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
        metrics = base_job.metrics or {}
        rows.append(Row(
            label="original", job_id=base_job.id, state=base_job.state if not done else "measured",
            format=metrics.get("serve_kernel_baseline") or "dense",
            ppl_ratio=1.0 if done else None, task_recovery=1.0 if done and base_tasks else None,
            artifact_bytes=base_job.model_bytes, weights_bytes=base_job.weights_bytes_baseline,
            serve_vram_bytes=base_job.serve_vram_baseline_bytes, serve_kernel="dense" if done else None,
            serve_method=metrics.get("serve_method_baseline"), serve_tokens_per_s=base_job.serve_tokens_per_s_baseline,
            serve_batch_tokens_per_s=base_job.serve_batch_tokens_per_s_baseline,
            serve_prefill_tokens_per_s=base_job.serve_prefill_tokens_per_s_baseline, excluded="the original model",
            serve_offloaded=bool(metrics.get("serve_offloaded_baseline")),
            tasks={n: {"metric": t["metric"], "score": t.get("baseline"), "stderr": t.get("baseline_stderr")}
                   for n, t in base_tasks.items()},
        ))
    for job in members:
        rows.append(_member_row(job, base_tasks))
    decision = _recommend(rows, group.limits or {})
    chosen = next((r for r in rows if r.recommended), None)
    finished = all(JobState(j.state).terminal for j in members)
    return Comparison(group=group.id, model=group.model, limits=group.limits or {}, rows=rows, finished=finished,
                      recommended=chosen.label if chosen else None,
                      why=_why(rows, chosen, decision, group.limits or {}, finished))


def _member_row(job: Job, base_tasks: dict[str, Any]) -> Row:
    from api_client.contract import catalog

    row = Row(label=catalog.label_of(job.method, job.format), job_id=job.id, state=job.state, format=job.format,
              ppl_ratio=job.ppl_ratio, quantized_fraction=job.quantized_fraction,
              ppl_ratio_low=job.ppl_ratio_low, ppl_ratio_high=job.ppl_ratio_high,
              kl_divergence=job.kl_divergence, kl_divergence_p99=job.kl_divergence_p99,
              kl_interval=(job.metrics or {}).get("kl_interval"),
              artifact_bytes=job.artifact_bytes, weights_bytes=job.weights_bytes, serve_vram_bytes=job.serve_vram_bytes,
              serve_kernel=job.serve_kernel, serve_method=job.serve_method, quantize_seconds=job.quantize_seconds,
              serve_tokens_per_s=job.serve_tokens_per_s, serve_batch_tokens_per_s=job.serve_batch_tokens_per_s,
              serve_prefill_tokens_per_s=job.serve_prefill_tokens_per_s, error=job.error,
              task_recovery=job.task_recovery, task_recovery_stderr=job.task_recovery_stderr,
              serve_offloaded=bool((job.metrics or {}).get("serve_offloaded")))
    serving_error = (job.metrics or {}).get("serving_error")
    recoveries = []
    for name, t in ((job.metrics or {}).get("tasks") or {}).items():
        figure = {"recovery": t.get("recovery"), "recovery_stderr": t.get("recovery_stderr"),
                  "recovery_paired": t.get("recovery_paired")}
        base = base_tasks.get(name)
        if figure["recovery"] is None and base and base.get("baseline") and t["metric"] == base["metric"]:
            # Measured against the group's one baseline: paired where both
            # kept their item scores (the same items, in the same order).
            figure = stats.recovery(base["baseline"], base.get("baseline_stderr"),
                                    stats.decode_scores(base.get("baseline_per_item")),
                                    t["quantized"], t.get("quantized_stderr"),
                                    stats.decode_scores(t.get("quantized_per_item")))
        row.tasks[name] = {"metric": t["metric"], "score": t["quantized"], "stderr": t.get("quantized_stderr"), **figure}
        if figure["recovery"] is not None:
            recoveries.append((figure["recovery"], figure["recovery_stderr"]))
    if row.task_recovery is None and recoveries:
        row.task_recovery, row.task_recovery_stderr = stats.mean_of(recoveries)
    if serving_error and row.serve_vram_bytes is None:
        row.excluded_vram = f"serve VRAM not measured: {serving_error}"
    elif row.serve_vram_bytes is None and job.serve_kernel and job.gpu_name not in (None, "cpu"):
        # A GGUF file served by llama.cpp's CPU build on a GPU worker.
        row.excluded_vram = f"serve VRAM not measured: its serve path ({job.serve_kernel}) holds no GPU memory"
    return row


@dataclass
class Decision:
    """How the recommendation was reached: the accuracy figures compared in
    turn, the best member on each, and the members still tied after each."""

    figures: list[str] = field(default_factory=list)  # "task recovery", "perplexity ratio"
    best: list[Row] = field(default_factory=list)
    tied: list[list[Row]] = field(default_factory=list)


def _recommend(rows: list[Row], limits: dict[str, Any]) -> Decision:
    """Mark the rows outside a limit, then the tie and the recommendation.

    Task recovery decides first where every candidate has it; among the
    members within its noise of the best, the perplexity ratio decides
    next, so a member that tasks cannot tell apart but whose perplexity
    ratio is clearly worse (a task of a few hundred items misses what
    hundreds of thousands of predicted tokens see) is not tied. Among those
    still tied: the smallest, then the fastest."""
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
    decision = Decision()
    if not candidates:
        return decision
    by_tasks = all(r.task_recovery is not None for r in candidates)
    for r in candidates:
        r.accuracy_interval = list(_interval(r, by_tasks))
    tied = candidates
    for figure_by_tasks in ([True, False] if by_tasks else [False]):
        if len(tied) == 1 or (figure_by_tasks is False and any(r.ppl_ratio is None for r in tied)):
            break
        best = _best(tied, figure_by_tasks)
        within = [r for r in tied if stats.overlaps(_interval(r, figure_by_tasks), _interval(best, figure_by_tasks))]
        for r in tied:
            if r not in within:
                r.untied_by = _figure(figure_by_tasks)
        decision.figures.append(_figure(figure_by_tasks))
        decision.best.append(best)
        decision.tied.append(within)
        tied = within
    for r in tied:
        r.tied = len(tied) > 1
    smallest = min(_size_of(r, limits) for r in tied)
    as_small = [r for r in tied if _size_of(r, limits) <= smallest * (1 + SAME_SIZE)]
    min(as_small, key=lambda r: (-(r.serve_tokens_per_s or 0.0), _size_of(r, limits))).recommended = True
    return decision


def _figure(by_tasks: bool) -> str:
    return "task recovery" if by_tasks else "perplexity ratio"


def _best(candidates: list[Row], by_tasks: bool) -> Row:
    """The most accurate: the highest recovery (the lower perplexity ratio
    between equal ones), or the lowest perplexity ratio; a figure better
    than the original's counts as the original's (see _interval)."""
    inf = float("inf")
    if by_tasks:
        return max(candidates, key=lambda r: (min(r.task_recovery or 0.0, 1.0), -(r.ppl_ratio or inf)))
    return min(candidates, key=lambda r: (max(r.ppl_ratio, 1.0), r.ppl_ratio) if r.ppl_ratio is not None else (inf, inf))


def _interval(r: Row, by_tasks: bool) -> tuple[float, float]:
    """The row's accuracy as an interval on one scale, higher is better: its
    task recovery's 95 % interval, or its perplexity ratio's, negated. A
    figure without one (one window, an old job) is a point.

    The original is the ceiling: a quantized model that scores above it (a
    recovery over 100 %, a ratio under 1) is as good as the original, not
    better, so such a member does not push out others that match the
    original within their noise."""
    if by_tasks:
        low, high = stats.interval(r.task_recovery or 0.0, r.task_recovery_stderr)
        return min(low, 1.0), min(high, 1.0)
    ratio = r.ppl_ratio if r.ppl_ratio is not None else float("inf")
    low = r.ppl_ratio_low if r.ppl_ratio_low is not None else ratio
    high = r.ppl_ratio_high if r.ppl_ratio_high is not None else ratio
    return -max(high, 1.0), -max(low, 1.0)


def _size_key(limits: dict[str, Any]) -> str:
    return "artifact" if limits.get("max_size_bytes") else "serve VRAM"


def _size_of(r: Row, limits: dict[str, Any]) -> float:
    """What "smallest" means for the group: the artifact under --max-size,
    else the measured serve VRAM (the weights held, where a CPU worker
    measured no VRAM)."""
    if limits.get("max_size_bytes"):
        return float(r.artifact_bytes or 0)
    return float(r.serve_vram_bytes or r.weights_bytes or r.artifact_bytes or 0)


def accuracy_text(r: Row, by_tasks: bool) -> str:
    """'99.0 % ± 2.9' (± the 95 % half-width) or '1.0114, 95 % 1.0050-1.0180'."""
    if by_tasks:
        from api_client.contract.figures import recovery_text

        return recovery_text(r.task_recovery, r.task_recovery_stderr)
    if r.ppl_ratio_low is not None and r.ppl_ratio_high is not None:
        return f"{r.ppl_ratio:.4f}, 95 % {r.ppl_ratio_low:.4f}-{r.ppl_ratio_high:.4f}"
    return f"{r.ppl_ratio:.4f}"


def _why(rows: list[Row], chosen: Row | None, decision: Decision, limits: dict[str, Any], finished: bool) -> str:
    limit_text = " and ".join(f"{name} {size(limits[key])}" for key, name in
                              (("max_size_bytes", "size"), ("max_vram_bytes", "serve VRAM")) if limits.get(key))
    within = f" within {limit_text}" if limit_text else ""
    pending = "" if finished else " (so far: members are still running)"
    if chosen is None:
        return f"no member succeeded{within}{pending}"
    candidates = [r for r in rows if r.excluded is None]
    if len(candidates) == 1:
        by_tasks = chosen.task_recovery is not None
        return (f"{chosen.label}: {_figure(by_tasks)} ({accuracy_text(chosen, by_tasks)}), "
                f"the only member that succeeded{within}{pending}")
    of = f"of the {len(candidates)} members that succeeded{within}{pending}"
    steps = list(zip(decision.figures, decision.best, decision.tied, [candidates, *decision.tied], strict=False))
    tied = [r for r in candidates if r.tied]
    if not tied:
        # Clear of the others: on the first figure, or on the perplexity ratio among those tasks could not tell apart.
        figure, best, _, previous = steps[-1]
        by_tasks = figure == "task recovery"
        what = f"the {'best' if by_tasks else 'lowest'} {figure} ({accuracy_text(chosen, by_tasks)})"
        if len(steps) == 1:
            return f"{chosen.label}: {what} {of}, clear of the others' 95 % intervals"
        others = ", ".join(r.label for r in previous if r is not chosen)
        first, first_best = steps[0][0], steps[0][1]
        return (f"{chosen.label}: tied with {others} on {first} (95 % intervals overlap {first_best.label}'s "
                f"{accuracy_text(first_best, True)}) but {what}, clear of theirs; {of}")
    parts = []
    for figure, best, _kept, _previous in steps:
        parts.append(f"{figure} (95 % intervals overlap {best.label}'s {accuracy_text(best, figure == 'task recovery')})")
    notes = []
    for figure, best, kept, previous in steps:
        dropped = [r for r in previous if r not in kept]
        if dropped and figure == "perplexity ratio" and len(steps) > 1:
            notes.append(f"{', '.join(r.label for r in dropped)} also {'ties' if len(dropped) == 1 else 'tie'} on "
                         f"task recovery but {'is' if len(dropped) == 1 else 'are'} clear of {best.label} on perplexity ratio")
    least = min(_size_of(r, limits) for r in tied)
    as_small = [r for r in tied if _size_of(r, limits) <= least * (1 + SAME_SIZE)]
    if len(as_small) == 1:
        pick = f"{chosen.label} is the smallest ({_size_key(limits)} {size(_size_of(chosen, limits))})"
    else:
        speed = f"{chosen.serve_tokens_per_s:.1f} tok/s" if chosen.serve_tokens_per_s is not None else "speed unknown"
        pick = (f"{chosen.label} is the fastest ({speed} at batch 1) of the smallest "
                f"({', '.join(r.label for r in as_small)}: {_size_key(limits)} within {SAME_SIZE:.0%} of {size(least)})")
    names = ", ".join(r.label for r in sorted(tied, key=lambda r: r is not chosen))
    note = "".join(f"; {n}" for n in notes)
    return f"{names} tie within noise on {' and on '.join(parts)}{note}; {pick}, {of}"
