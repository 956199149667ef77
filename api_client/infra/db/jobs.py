"""Reading and changing job rows. Every state or stage change goes through
`transition`, which updates the row only if it is still in an expected state
(so a cancelled job is never revived by a worker) and writes the event row in
the same transaction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, overload

from sqlalchemy import insert, select, update

from api_client.errors import JobNotFound, SpecError
from api_client.infra.db.database import Database
from api_client.infra.db.models import Farm, Job, JobEvent, JobState, utcnow
from api_client.redaction import redact, redact_value

MIN_PREFIX = 4
# The job fields that hold free text or figures a library or a user's file
# may have put a secret into: redacted as they are written, like every
# event's message (api_client/redaction.py).
_REDACTED = ("error", "error_traceback", "metrics")


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: redact_value(v) if k in _REDACTED else v for k, v in fields.items()}


def create(db: Database, job: Job, message: str = "submitted") -> None:
    now = utcnow()
    job.created_at = job.updated_at = now
    with db.session() as s:
        s.add(job)
        s.flush()
        s.add(JobEvent(job_id=job.id, at=now, state=job.state, stage=None, message=redact(message)))


def delete(db: Database, job_id: str) -> None:
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is not None:
            s.delete(job)


def get(db: Database, job_ref: str) -> Job:
    """The job whose id is `job_ref` or starts with it (at least 4 characters)."""
    with db.session() as s:
        job = s.get(Job, job_ref)
        if job is not None:
            return job
        if len(job_ref) < MIN_PREFIX:
            raise SpecError(f"give at least {MIN_PREFIX} characters of a job id, not {job_ref!r}")
        found = s.scalars(select(Job).where(Job.id.startswith(job_ref, autoescape=True))
                          .order_by(Job.created_at.desc()).limit(6)).all()
    if not found:
        raise JobNotFound(f"no job {job_ref!r}")
    if len(found) > 1:
        more = ", …" if len(found) > 5 else ""
        raise SpecError(f"job id prefix {job_ref!r} is ambiguous: it starts "
                        f"{', '.join(j.id for j in found[:5])}{more}; give more characters")
    return found[0]


def list_jobs(db: Database, state: str | None = None, limit: int = 50, user: str | None = None) -> list[Job]:
    q = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
    if state:
        q = q.where(Job.state == state)
    if user:
        q = q.where(Job.submitted_by == user)
    with db.session() as s:
        return list(s.scalars(q))


def events(db: Database, job_id: str, after_id: int = 0) -> list[JobEvent]:
    with db.session() as s:
        q = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id).order_by(JobEvent.id)
        return list(s.scalars(q))


def transition(
    db: Database,
    job_id: str,
    *,
    expect: Iterable[JobState],
    state: JobState,
    stage: str | None = None,
    message: str | None = None,
    expect_attempts: int | None = None,
    **fields: Any,
) -> bool:
    """Move the job to `state`/`stage` if it is in one of `expect`.

    Returns False, changing nothing, when the job has moved on meanwhile.
    """
    now = utcnow()
    values = {"state": state.value, "stage": stage, "updated_at": now, **_clean(fields)}
    if state.terminal:
        values.setdefault("finished_at", now)
    cond = [Job.id == job_id, Job.state.in_([e.value for e in expect])]
    if expect_attempts is not None:
        cond.append(Job.attempts == expect_attempts)
    with db.session() as s:
        res = s.execute(update(Job).where(*cond).values(**values).execution_options(synchronize_session=False))
        if res.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult for an UPDATE
            return False
        s.execute(insert(JobEvent).values(job_id=job_id, at=now, state=state.value, stage=stage,
                                          message=redact(message) if message else message))
    return True


# What one attempt measured or left: a new attempt starts without them, so
# `qfarm status` never shows a superseded attempt's figures as the job's.
ATTEMPT_FIELDS = (
    "finished_at", "peak_vram_bytes", "peak_vram_nvml_bytes", "eval_peak_vram_bytes", "peak_rss_bytes",
    "eval_peak_rss_bytes", "artifact_bytes", "quantize_seconds", "eval_seconds", "ppl_baseline", "ppl_quantized",
    "ppl_ratio", "tokens_per_s_baseline", "tokens_per_s_quantized", "weights_bytes", "weights_bytes_baseline",
    "serve_vram_bytes", "serve_vram_baseline_bytes", "serve_kernel", "serve_tokens_per_s",
    "serve_tokens_per_s_baseline", "task_recovery", "metrics", "library_versions", "artifact_uri", "error",
    "error_traceback", "process", "progress_at", "progress_cpu_s", "quantized_fraction", "serve_method",
    "serve_batch_tokens_per_s", "serve_batch_tokens_per_s_baseline", "serve_prefill_tokens_per_s",
    "serve_prefill_tokens_per_s_baseline", "task_recovery_stderr", "ppl_ratio_low", "ppl_ratio_high", "kl_divergence",
    "kl_divergence_p99",
)


def fresh_attempt() -> dict[str, None]:
    """The values that clear a superseded attempt's figures."""
    return dict.fromkeys(ATTEMPT_FIELDS)


def record(db: Database, job_id: str, attempt: int | None = None, **fields: Any) -> bool:
    """Store figures on a job without changing its state. With `attempt`,
    only while that attempt runs: False (nothing written) once it was
    superseded, cancelled or ended."""
    cond = [Job.id == job_id]
    if attempt is not None:
        cond += [Job.attempts == attempt, Job.state == JobState.RUNNING.value]
    with db.session() as s:
        res = s.execute(update(Job).where(*cond).values(updated_at=utcnow(), **_clean(fields))
                        .execution_options(synchronize_session=False))
        return bool(res.rowcount)  # type: ignore[attr-defined]  # a CursorResult for an UPDATE


def progressed(db: Database, job_id: str, attempt: int, cpu_s: float) -> bool:
    """The running attempt's job process advanced (worker/pulse.py). Leaves
    `updated_at` alone: it says when the job last changed, not that it
    lives. False once the attempt is no longer the job's running one."""
    with db.session() as s:
        res = s.execute(update(Job).where(Job.id == job_id, Job.attempts == attempt, Job.state == JobState.RUNNING.value)
                        .values(progress_at=utcnow(), progress_cpu_s=cpu_s).execution_options(synchronize_session=False))
        return bool(res.rowcount)  # type: ignore[attr-defined]


def note(db: Database, job_id: str, message: str) -> None:
    """An event that records something without a state change."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is not None:
            s.add(JobEvent(job_id=job_id, at=utcnow(), state=job.state, stage=job.stage, message=redact(message)))


def farm_id(db: Database) -> str:
    """The farm's identity, made with its database (migration 0002)."""
    with db.session() as s:
        farm = s.scalars(select(Farm)).first()
    if farm is None:
        from api_client.errors import ServiceUnavailable

        raise ServiceUnavailable(f"the database at {db.display_url} has no farm id: run `qfarm db upgrade`")
    return farm.id


def stages(db: Database, job_ids: list[str]) -> dict[str, str | None]:
    with db.session() as s:
        return {row.id: row.stage for row in s.execute(select(Job.id, Job.stage).where(Job.id.in_(job_ids)))}


def queued_since(db: Database, older_than_s: float) -> list[Job]:
    """Queued jobs untouched for `older_than_s` seconds (a submit in flight
    writes its row a moment before its message)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with db.session() as s:
        return list(s.scalars(select(Job).where(Job.state == JobState.QUEUED.value, Job.updated_at < cutoff)))


def running(db: Database) -> list[Job]:
    with db.session() as s:
        return list(s.scalars(select(Job).where(Job.state == JobState.RUNNING.value)))


def pending_cleanups(db: Database) -> list[Job]:
    with db.session() as s:
        return list(s.scalars(select(Job).where(Job.cleanup_uri.is_not(None))))


@overload
def aware(dt: datetime) -> datetime: ...
@overload
def aware(dt: None) -> None: ...
def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were written in UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


STATUS_FIELDS = (
    "id", "state", "stage", "method", "format", "params", "model", "calib", "eval", "weights",
    "max_vram_bytes", "queue", "submitted_by", "created_at", "started_at", "finished_at", "attempts",
    "worker", "gpu_index", "gpu_name", "model_bytes", "peak_vram_bytes", "peak_vram_nvml_bytes",
    "eval_peak_vram_bytes", "peak_rss_bytes", "eval_peak_rss_bytes", "estimates", "artifact_bytes", "quantized_fraction",
    "quantize_seconds", "eval_seconds", "ppl_baseline",
    "ppl_quantized", "ppl_ratio", "tokens_per_s_baseline", "tokens_per_s_quantized", "metrics",
    "library_versions", "artifact_uri", "error", "allow_remote_code", "priority",
    "weights_bytes", "weights_bytes_baseline", "serve_vram_bytes", "serve_vram_baseline_bytes", "serve_kernel",
    "serve_tokens_per_s", "serve_tokens_per_s_baseline", "task_recovery", "group_id",
    "serve_method", "serve_batch_tokens_per_s", "serve_batch_tokens_per_s_baseline", "serve_prefill_tokens_per_s",
    "serve_prefill_tokens_per_s_baseline", "task_recovery_stderr", "ppl_ratio_low", "ppl_ratio_high", "kl_divergence",
    "kl_divergence_p99",
)


def to_dict(job: Job) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in STATUS_FIELDS:
        value = getattr(job, name)
        if isinstance(value, datetime):
            value = aware(value).isoformat()
        out[name] = value
    return out


def event_dict(ev: JobEvent) -> dict[str, Any]:
    return {"id": ev.id, "at": aware(ev.at).isoformat(), "state": ev.state, "stage": ev.stage, "message": ev.message}
