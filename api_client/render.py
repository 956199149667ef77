"""How jobs look on a terminal."""

from __future__ import annotations

from datetime import datetime

from api_client.db import Job
from api_client.db.jobs import aware
from api_client.db.models import Worker


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def num(x: float | None, fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt)


def when(dt: datetime | None) -> str:
    return "-" if dt is None else aware(dt).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_lines(job: Job) -> list[str]:
    params = " ".join(f"{k}={v}" for k, v in (job.params or {}).items()) or "-"
    state = job.state + (f" ({job.stage})" if job.stage and job.state == "running" else "")
    rows = [
        ("id", job.id), ("state", state), ("method", f"{job.method} → {job.format}"), ("params", params),
        ("model", job.model), ("submitted by", job.submitted_by), ("created", when(job.created_at)),
        ("started", when(job.started_at)), ("finished", when(job.finished_at)),
        ("worker", f"{job.worker} (GPU {job.gpu_index}: {job.gpu_name})" if job.gpu_index is not None else (job.worker or "-")),
        ("model size", size(job.model_bytes)), ("artifact size", size(job.artifact_bytes)),
        ("quantize time", "-" if job.quantize_seconds is None else f"{job.quantize_seconds:.1f} s"),
        ("peak VRAM", f"{size(job.peak_vram_bytes)} (torch), {size(job.peak_vram_nvml_bytes)} (NVML)"),
        ("eval peak VRAM", size(job.eval_peak_vram_bytes)),
        ("perplexity", f"{num(job.ppl_baseline)} → {num(job.ppl_quantized)} (ratio {num(job.ppl_ratio, '.4f')})"),
        ("decode tok/s", f"{num(job.tokens_per_s_baseline, '.1f')} → {num(job.tokens_per_s_quantized, '.1f')}"),
        ("artifact", job.artifact_uri or "-"),
    ]
    if job.error:
        rows.append(("error", job.error))
    if job.attempts > 1:
        rows.append(("attempts", str(job.attempts)))
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}}  {v}" for k, v in rows]


def list_row(job: Job) -> tuple[str, ...]:
    ratio = num(job.ppl_ratio, ".4f")
    stage = job.stage if job.state == "running" and job.stage else ""
    return (job.id, job.state, stage, f"{job.method}/{job.format}", job.submitted_by, when(job.created_at), ratio, job.model)


def ago(dt: datetime | None) -> str:
    if dt is None:
        return "-"
    from api_client.db.models import utcnow

    return f"{(utcnow() - aware(dt)).total_seconds():.0f} s ago"


def worker_row(w: Worker) -> tuple[str, ...]:
    gpu = "cpu" if w.gpu_index is None else f"{w.gpu_index}: {w.gpu_name or '?'}"
    return (w.name, w.host, gpu, w.current_job or "-", str(w.jobs_done), ago(w.heartbeat_at))
