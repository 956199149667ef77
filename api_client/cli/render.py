"""How jobs look on a terminal."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from api_client.app.views import Job, Publication, Worker, aware
from api_client.contract.figures import duration, fraction, num, recovery_text, score_text, size


def when(dt: datetime | None) -> str:
    return "-" if dt is None else aware(dt).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_lines(job: Job, published: list[Publication] | None = None) -> list[str]:
    params = " ".join(f"{k}={v}" for k, v in (job.params or {}).items()) or "-"
    state = job.state + (f" ({job.stage})" if job.stage and job.state == "running" else "")
    rows = [
        ("id", job.id), ("state", state), ("method", f"{job.method} → {job.format}"), ("params", params),
        ("model", job.model), ("submitted by", job.submitted_by), ("created", when(job.created_at)),
        ("started", when(job.started_at)), ("finished", when(job.finished_at)),
        ("estimate", estimated(job)), ("elapsed / estimate", elapsed_vs_estimate(job)),
        ("worker", f"{job.worker} (GPU {job.gpu_index}: {job.gpu_name})" if job.gpu_index is not None else (job.worker or "-")),
        ("model size", size(job.model_bytes)), ("artifact size", size(job.artifact_bytes)),
        ("quantized", quantized(job)),
        ("quantize time", duration(job.quantize_seconds)),
        ("evaluation time", duration(job.eval_seconds)),
        ("total time", duration((aware(job.finished_at) - aware(job.started_at)).total_seconds()
                                if job.started_at and job.finished_at else None)),
        ("peak VRAM", f"{size(job.peak_vram_bytes)} (torch), {size(job.peak_vram_nvml_bytes)} (NVML)"),
        ("peak memory (RSS)", f"{size(job.peak_rss_bytes)} quantizing, {size(job.eval_peak_rss_bytes)} whole job"),
        ("eval peak VRAM", size(job.eval_peak_vram_bytes)),
        ("perplexity", f"{num(job.ppl_baseline)} → {num(job.ppl_quantized)} (ratio {num(job.ppl_ratio, '.4f')}"
                       f"{ratio_interval(job)})"),
        ("KL divergence", kl_line(job)),
        ("evaluated on", evaluated_on(job)),
        ("decode tok/s", f"{num(job.tokens_per_s_baseline, '.1f')} → {num(job.tokens_per_s_quantized, '.1f')}"
                         f"{speed_note((job.metrics or {}).get('decode'), 'reference load')}"),
        ("weights in memory", f"{size(job.weights_bytes_baseline)} → {size(job.weights_bytes)}"),
        ("serve VRAM", serve_vram(job)),
        ("serve decode tok/s", serve_speed_line(job, "serve_decode", "serve_tokens_per_s", "decode_tokens_per_s")),
        ("serve batch tok/s", serve_speed_line(job, "serve_batch", "serve_batch_tokens_per_s", "tokens_per_s")),
        ("serve prefill tok/s", serve_speed_line(job, "serve_batch", "serve_prefill_tokens_per_s", "prefill_tokens_per_s")),
        *task_lines(job),
        ("task recovery", recovery_text(job.task_recovery, job.task_recovery_stderr)),
        *format_lines(job),
        ("group", job.group_id or "-"),
        ("artifact", job.artifact_uri or "-"),
        ("artifact sha256", str((job.metrics or {}).get("artifact_sha256") or "-")),
        *[("published", f"{p.url} at {p.revision} ({when(p.published_at)}, by {p.published_by})") for p in published or []],
        ("environment", environment_line(job)),
        ("libraries", libraries_line(job)),
    ]
    if job.error:
        rows.append(("error", job.error))
    if job.attempts > 1:
        rows.append(("attempts", str(job.attempts)))
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}}  {v}" for k, v in rows]



def quantized(job: Job) -> str:
    """The share of the decoder's linear and expert weights the artifact
    stores quantized (read from its tensors), and what stayed in full
    precision by design or by omission."""
    if job.quantized_fraction is None:
        return "-"
    m = job.metrics or {}
    kept = m.get("kept_full_precision") or []
    unreached = m.get("unreached_modules") or []
    parts = [f"{fraction(job.quantized_fraction)} of the decoder's linear and expert weights"]
    if kept:
        parts.append(f"routers kept in full precision: {', '.join(kept)}")
    if unreached:
        parts.append(f"not quantized: {', '.join(unreached[:4])}{' …' if len(unreached) > 4 else ''}")
    return "; ".join(parts)


def serve_vram(job: Job) -> str:
    """Peak GPU memory serving windows at batch 1, and the path that ran."""
    if job.serve_kernel is None:
        return "-"
    window = (job.metrics or {}).get("serve_window_tokens")
    where = f"{job.serve_kernel}, batch 1 × {window} tokens" if window else job.serve_kernel
    if job.serve_vram_bytes is None:
        return f"- (CPU worker; {where})"
    metrics = job.metrics or {}
    # Under --max-vram a model whose weights did not fit was partly in CPU memory.
    base, quant = (" (offloaded)" if metrics.get(k) else "" for k in ("serve_offloaded_baseline", "serve_offloaded"))
    return f"{size(job.serve_vram_baseline_bytes)}{base} → {size(job.serve_vram_bytes)}{quant} ({where})"


def task_lines(job: Job) -> list[tuple[str, str]]:
    """Each task's scores and recovery, each with its 95 % half-width (±)."""
    tasks = (job.metrics or {}).get("tasks") or {}
    lines = []
    for name, t in tasks.items():
        base = "-" if t.get("baseline") is None else score_text(t["baseline"], t.get("baseline_stderr"))
        rec = "" if t.get("recovery") is None else \
            f", recovery {recovery_text(t['recovery'], t.get('recovery_stderr'))}" + (" paired" if t.get("recovery_paired") else "")
        lines.append((f"task {name}", f"{t['metric']} {base} → {score_text(t['quantized'], t.get('quantized_stderr'))} "
                                      f"over {t['items']} items{rec}"))
    return lines


def publication_dict(p: Publication) -> dict[str, Any]:
    return {"repo": p.repo, "endpoint": p.endpoint, "url": p.url, "revision": p.revision,
            "published_by": p.published_by, "published_at": aware(p.published_at).isoformat()}


def format_lines(job: Job) -> list[tuple[str, str]]:
    """One line per file of an artifact that holds several (a GGUF job's
    formats): its size, perplexity ratio and the runtime that measured it,
    how it was made, and the tensors a k-quant had to write otherwise."""
    metrics = job.metrics or {}
    made = metrics.get("gguf") or {}
    lines = []
    for label, f in (metrics.get("formats") or {}).items():
        file = made.get(label) or {}
        types = ", ".join(f"{t} {n}" for t, n in (file.get("tensor_types") or {}).items())
        error = f.get("perplexity_error")
        ppl = f"ppl ratio {num(f.get('ppl_ratio'), '.4f')} ({f.get('ppl_kernel') or '-'})" if not error else f"perplexity: {error}"
        lines.append((f"format {label}", f"{file.get('file', '-')} {size(file.get('bytes'))}, {ppl}, "
                                         f"decode {num(f.get('serve_tokens_per_s'), '.1f')} tok/s ({f.get('serve_kernel') or '-'}); "
                                         f"{file.get('producer', '-')}; tensors {types or '-'}"))
        if file.get("fallback"):
            lines.append((f"format {label}", file["fallback"]))
    return lines





def ratio_interval(job: Job) -> str:
    if job.ppl_ratio_low is None or job.ppl_ratio_high is None:
        return ""
    return f", 95 % {job.ppl_ratio_low:.4f}-{job.ppl_ratio_high:.4f}"


def kl_line(job: Job) -> str:
    """Mean and 99th percentile of the per-token KL divergence, with the
    tokens it covered (or why it was not measured)."""
    m = job.metrics or {}
    if job.kl_divergence is None:
        return f"- ({m['kl_error']})" if m.get("kl_error") else "-"
    interval = m.get("kl_interval")
    within = f" (95 % {interval[0]:.4g}-{interval[1]:.4g})" if interval else ""
    same = f", same top token {m['kl_same_top'] * 100:.1f} %" if m.get("kl_same_top") is not None else ""
    return (f"mean {job.kl_divergence:.4g} nats{within}, p99 {num(job.kl_divergence_p99)}{same}, "
            f"over {m.get('kl_tokens', '?')} tokens")


def timing_text(timing: dict[str, Any]) -> str:
    """'hf-static-cudagraph, 1x32+64, 3 repeats': how a speed was timed
    (worker/serve_speed.py), and why it ran eagerly where a GPU could not
    replay it."""
    if timing.get("error"):
        return f"{timing.get('shape')}: {timing['error']}"
    text = f"{timing.get('method')}, {timing.get('shape')}, {timing.get('repeats')} repeats"
    if timing.get("fallback") and timing.get("method") != "hf-static-cudagraph":
        text += f"; eager: {timing['fallback']}"
    return text


def speed_note(timing: dict[str, Any] | None, what: str) -> str:
    return f" ({what}, {timing_text(timing)})" if timing else f" ({what})"


def serve_speed_line(job: Job, metric: str, column: str, key: str) -> str:
    """Original → artifact, each the mean over repeats with its standard
    deviation, then the kernel and the way it was timed."""
    m = job.metrics or {}
    base, quant = m.get(f"{metric}_baseline") or {}, m.get(metric) or {}

    def one(value: float | None, timing: dict[str, Any]) -> str:
        sd = timing.get(f"{key}_sd")
        return num(value, ".1f") + ("" if sd is None else f" (sd {sd:.1f})")

    return f"{one(getattr(job, f'{column}_baseline'), base)} → {one(getattr(job, column), quant)}" + \
        speed_note(quant, job.serve_kernel or "-")


def environment_line(job: Job) -> str:
    env = (job.metrics or {}).get("environment") or {}
    if not env:
        return "-"
    device = env.get("device") or "-"
    if env.get("gpu_capability"):
        device += f" (compute {env['gpu_capability']}), driver {env.get('driver') or '?'}, CUDA {env.get('cuda_runtime') or '?'}"
    return f"seed {env.get('seed')}; {device}"


def libraries_line(job: Job) -> str:
    versions = job.library_versions or {}
    return ", ".join(f"{k} {v}" for k, v in versions.items() if v and k != "cuda") or "-"


# A terminal of 100 columns shows a table whole; `--wide` shows every column.
NARROW = 100
LIST_HEADER = ("ID", "STATE", "METHOD", "USER", "CREATED", "TIME / ESTIMATE", "QUANT.", "PPL RATIO", "MODEL")
# Ratios compare only on the same text and windows: EVAL names them.
LIST_HEADER_WIDE = ("ID", "STATE", "STAGE", "METHOD", "PRIORITY", "USER", "CREATED", "TIME / ESTIMATE", "QUANTIZED",
                    "PPL RATIO", "EVAL", "MODEL")


def list_row(job: Job, wide: bool = False) -> tuple[str, ...]:
    ratio = num(job.ppl_ratio, ".4f")
    stage = job.stage if job.state == "running" and job.stage else ""
    if wide:
        return (job.id, job.state, stage, f"{job.method}/{job.format}", job.priority, job.submitted_by,
                when(job.created_at), elapsed_vs_estimate(job), fraction(job.quantized_fraction), ratio, eval_key(job),
                job.model)
    # A running job shows its stage; a method its format only when it is not its default one.
    from api_client.contract import catalog

    created = "-" if job.created_at is None else aware(job.created_at).strftime("%m-%d %H:%M")
    return (job.id, stage or job.state, catalog.label_of(job.method, job.format), job.submitted_by, created,
            elapsed_vs_estimate(job), fraction(job.quantized_fraction), ratio,
            job.model.rstrip("/").rsplit("/", 1)[-1] if job.model.startswith(("/", "s3://", "file://")) else job.model)


def table_lines(rows: list[tuple[str, ...]], width: int | None = None) -> list[str]:
    """Rows as columns two spaces apart; the last column is cut to `width`."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
        lines.append(line if width is None or len(line) <= width else line[:width - 1] + "…")
    return lines


def _eval_figures(job: Job) -> tuple[str, Any, Any, Any]:
    source = str((job.eval or {}).get("source") or "builtin")
    m = job.metrics or {}
    return source, m.get("eval_seqlen"), m.get("eval_windows"), m.get("eval_tokens")


def evaluated_on(job: Job) -> str:
    """Which text, window length and count the perplexity came from."""
    source, seqlen, windows, tokens = _eval_figures(job)
    if seqlen is None:
        return f"{source} (windows not measured yet)"
    text = f"{source}: {windows} windows of {seqlen} tokens ({tokens} tokens predicted)"
    kernel = (job.metrics or {}).get("ppl_kernel")
    # The artifact's perplexity ran packed where its dequantized load could not fit the cap.
    return f"{text}; the artifact on its {kernel} load" if kernel and kernel != "dense" else text


def eval_key(job: Job) -> str:
    """Short: the text's name, tokens per window × windows. Two jobs' ratios
    compare when their keys (and models) are equal."""
    source, seqlen, windows, _ = _eval_figures(job)
    name = source.rstrip("/").rsplit("/", 1)[-1]
    return "-" if seqlen is None else f"{name}:{seqlen}x{windows}"


def estimated(job: Job) -> str:
    """'~44.1 s on CPU workers, ~6.6 s on H100 workers'."""
    return ", ".join(describe_estimate(e) for e in job.estimates or []) or "-"


def describe_estimate(e: dict[str, Any]) -> str:
    """One estimate as a job row keeps it (api_client/app/estimate.Estimate.as_dict)."""
    what = f"{e['device']} workers" + ("" if e.get("measured", True) else " (estimated with H100 figures)")
    return f"~{duration(e['seconds'])} on {what}"


def elapsed(job: Job) -> float | None:
    """Seconds the job has run (so far, or in all)."""
    from api_client.app.views import utcnow

    if job.started_at is None:
        return None
    end = aware(job.finished_at) if job.finished_at else utcnow()
    return (end - aware(job.started_at)).total_seconds()


def elapsed_vs_estimate(job: Job) -> str:
    """'12.0 s / ~44.1 s': elapsed beside the estimate for the device it runs on."""
    from api_client.app.estimate import device_class

    mine = None
    if job.estimates:
        device = device_class(job.gpu_name)[1]
        mine = next((e["seconds"] for e in job.estimates if e["device"] == device), None)
        if mine is None and job.started_at is None:
            mine = min(e["seconds"] for e in job.estimates)
    return f"{duration(elapsed(job)) if job.started_at else '-'} / {'~' + duration(mine) if mine else '-'}"


def clock(job: Job) -> str:
    """The job's own time, h:mm:ss from its start (not from the submit);
    '-:--:--' while it has not started."""
    seconds = elapsed(job)
    if seconds is None:
        return "-:--:--"
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def ago(dt: datetime | None) -> str:
    if dt is None:
        return "-"
    from api_client.app.views import utcnow

    return f"{(utcnow() - aware(dt)).total_seconds():.0f} s ago"


def worker_row(w: Worker, stage: str | None, timeout_s: float) -> tuple[str, ...]:
    gpu = "cpu" if w.gpu_index is None else f"{w.gpu_index}: {w.gpu_name or '?'}"
    memory = "-" if w.gpu_total_bytes is None else f"{size(w.gpu_free_bytes)} of {size(w.gpu_total_bytes)}"
    from api_client.app.views import worker_status as status

    return (w.name, status(w, timeout_s), w.host, gpu, memory, ",".join(w.queues or []), w.current_job or "-",
            stage or "-", str(w.jobs_done), ago(w.heartbeat_at))


def comparison_table(table: Any, wide: bool = True) -> Any:
    """A compare group (api_client/app/compare.Comparison) as a rich table: one
    row per method and the original model, the recommended one marked (★),
    the members tied with it within noise marked (=). ± is a 95 % interval's
    half-width; speeds are means over repeats, timed as the `timed` column
    says. The narrow table (the default) fits 100 columns: the accuracy
    figures without their intervals but recovery's ±, no format, weights,
    KL or quantize time, shorter headings, `*` for an offloaded serve; why a
    member failed follows the table (comparison_notes)."""
    from rich.table import Table

    limits = ", ".join(f"{name} ≤ {size(table.limits[key])}" for key, name in
                       (("max_size_bytes", "size"), ("max_vram_bytes", "serve VRAM")) if table.limits.get(key))
    out = Table(title=f"compare {table.group}: {table.model}" + (f" ({limits})" if limits else ""), title_justify="left")
    names = (("", "method", "quantized", "ppl ratio (95 %)", "KL mean (95 %) / p99", "task recovery ± 95 %", "artifact",
              "weights", "serve VRAM", "kernel", "timed", "quantize", "decode tok/s", "batch tok/s", "prefill tok/s",
              "state") if wide else
             ("method", "ppl ratio", "recovery", "artifact", "serve VRAM", "kernel", "tok/s", "state"))
    for name in names:
        # Figures with intervals and long names may wrap: the state column must stay readable.
        out.add_column(name, no_wrap=name in ("", "method", "quantized", "quantize", "decode tok/s", "batch tok/s",
                                              "prefill tok/s", "ppl ratio", "tok/s"), overflow="fold")
    for r in table.rows:
        recovery = recovery_text(r.task_recovery, r.task_recovery_stderr)
        mark = "★" if r.recommended else ("=" if r.tied else "")
        if wide:
            state = r.state if r.state != "failed" else f"failed: {r.error or ''}"
            ratio = num(r.ppl_ratio, ".4f") + (f" ({r.ppl_ratio_low:.4f}-{r.ppl_ratio_high:.4f})"
                                               if r.ppl_ratio_low is not None and r.ppl_ratio_high is not None else "")
            kl = "-" if r.kl_divergence is None else f"{r.kl_divergence:.4f}" + \
                (f" ({r.kl_interval[0]:.4f}-{r.kl_interval[1]:.4f})" if r.kl_interval else "") + \
                f" / {num(r.kl_divergence_p99, '.3f')}"
            out.add_row(mark, r.label, fraction(r.quantized_fraction), ratio, kl, recovery,
                        size(r.artifact_bytes), size(r.weights_bytes),
                        size(r.serve_vram_bytes) + (" (offloaded)" if r.serve_offloaded else ""), r.serve_kernel or "-",
                        (r.serve_method or "-").removeprefix("hf-static-"),
                        duration(r.quantize_seconds), num(r.serve_tokens_per_s, ".1f"),
                        num(r.serve_batch_tokens_per_s, ".1f"), num(r.serve_prefill_tokens_per_s, ".0f"), state)
        else:
            out.add_row(r.label + (f" {mark}" if mark else ""), num(r.ppl_ratio, ".4f"), recovery, size(r.artifact_bytes),
                        size(r.serve_vram_bytes) + ("*" if r.serve_offloaded else ""), r.serve_kernel or "-",
                        num(r.serve_tokens_per_s, ".1f"), r.state)
    return out


def comparison_notes(table: Any, wide: bool = True) -> list[str]:
    """The lines under a narrow compare table: why each failed member
    failed, and what `*` means."""
    if wide:
        return []
    notes = [f"{r.label} failed: {r.error}" for r in table.rows if r.state == "failed" and r.error]
    if any(r.serve_offloaded for r in table.rows):
        notes.append("* some weights stayed in CPU memory while serving (under --max-vram)")
    return notes
