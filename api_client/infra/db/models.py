"""Tables: `jobs` (one row a job, its spec and every figure measured) and
`job_events` (one row for every state or stage change, with its time)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from api_client.contract.states import JobState, Stage

__all__ = ["Base", "Farm", "Job", "JobEvent", "JobGroup", "JobState", "Publication", "Stage", "Worker", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default=JobState.QUEUED.value)
    stage: Mapped[str | None] = mapped_column(String(16))
    # What was asked for.
    method: Mapped[str] = mapped_column(String(32), nullable=False)
    format: Mapped[str] = mapped_column(String(32), nullable=False)
    params: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    calib: Mapped[dict | None] = mapped_column(JSON)
    eval: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    max_vram_bytes: Mapped[int | None] = mapped_column(BigInteger)
    weights: Mapped[str] = mapped_column(String(8), nullable=False, default="auto")
    # The job may run the model's own code (auto_map, *.py): only on workers
    # started with --allow-remote-code, which alone consume its queue.
    allow_remote_code: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    priority: Mapped[str] = mapped_column(String(8), nullable=False, default="normal")
    queue: Mapped[str] = mapped_column(String(64), nullable=False)
    submitted_by: Mapped[str] = mapped_column(String(128), nullable=False)
    # Lifecycle.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    gpu_index: Mapped[int | None] = mapped_column(Integer)
    gpu_name: Mapped[str | None] = mapped_column(String(128))
    # Figures.
    model_bytes: Mapped[int | None] = mapped_column(BigInteger)
    peak_vram_bytes: Mapped[int | None] = mapped_column(BigInteger)
    peak_vram_nvml_bytes: Mapped[int | None] = mapped_column(BigInteger)
    eval_peak_vram_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Peak resident memory of the job process through quantizing, and through
    # the whole job: the memory figure of a CPU worker.
    peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    eval_peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Seconds the job should take, by device class of the workers that could
    # take it at submit (api_client/app/estimate.py).
    estimates: Mapped[list | None] = mapped_column(JSON)
    artifact_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # The share of the decoder's linear and expert weights (by parameters)
    # the artifact stores quantized, read from its tensors (worker/coverage.py).
    quantized_fraction: Mapped[float | None] = mapped_column(Float)
    quantize_seconds: Mapped[float | None] = mapped_column(Float)
    eval_seconds: Mapped[float | None] = mapped_column(Float)
    ppl_baseline: Mapped[float | None] = mapped_column(Float)
    ppl_quantized: Mapped[float | None] = mapped_column(Float)
    ppl_ratio: Mapped[float | None] = mapped_column(Float)
    tokens_per_s_baseline: Mapped[float | None] = mapped_column(Float)
    tokens_per_s_quantized: Mapped[float | None] = mapped_column(Float)
    # Serving (worker/evaluators/serving.py): the weights as held once loaded,
    # peak GPU memory running windows at batch 1, the kernel path those ran
    # (e.g. gptq-tritonv2, bnb-nf4, dense) and decode speed on it.
    weights_bytes: Mapped[int | None] = mapped_column(BigInteger)
    weights_bytes_baseline: Mapped[int | None] = mapped_column(BigInteger)
    serve_vram_bytes: Mapped[int | None] = mapped_column(BigInteger)
    serve_vram_baseline_bytes: Mapped[int | None] = mapped_column(BigInteger)
    serve_kernel: Mapped[str | None] = mapped_column(String(48))
    serve_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    serve_tokens_per_s_baseline: Mapped[float | None] = mapped_column(Float)
    # How generation was timed (worker/serve_speed.py: hf-static-cudagraph,
    # hf-static-eager), and a batched request's throughput and prefill speed.
    serve_method: Mapped[str | None] = mapped_column(String(32))
    serve_batch_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    serve_batch_tokens_per_s_baseline: Mapped[float | None] = mapped_column(Float)
    serve_prefill_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    serve_prefill_tokens_per_s_baseline: Mapped[float | None] = mapped_column(Float)
    # Mean over --tasks of quantized / original score (per task in metrics),
    # and its standard error (paired where both models answered the same items).
    task_recovery: Mapped[float | None] = mapped_column(Float)
    task_recovery_stderr: Mapped[float | None] = mapped_column(Float)
    # The perplexity ratio's 95 % interval (paired bootstrap over windows), and
    # the KL divergence of the artifact's next-token distribution from the
    # original's (mean and 99th percentile over the tokens covered, nats).
    ppl_ratio_low: Mapped[float | None] = mapped_column(Float)
    ppl_ratio_high: Mapped[float | None] = mapped_column(Float)
    kl_divergence: Mapped[float | None] = mapped_column(Float)
    kl_divergence_p99: Mapped[float | None] = mapped_column(Float)
    # The compare group the job belongs to (qfarm compare).
    group_id: Mapped[str | None] = mapped_column(String(32), index=True)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    library_versions: Mapped[dict | None] = mapped_column(JSON)
    artifact_uri: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    # A partial upload whose removal failed (the store was down): every
    # worker's reconciler retries it until it is gone.
    cleanup_uri: Mapped[str | None] = mapped_column(Text)
    # The running attempt's job process (api_client/infra/liveness.py: host boot,
    # PID namespace, pid, start time) and the last time it was seen
    # advancing (its CPU time, progress_cpu_s, grew): what a reconciler
    # reads before it judges the job's worker lost.
    process: Mapped[str | None] = mapped_column(String(96))
    progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    progress_cpu_s: Mapped[float | None] = mapped_column(Float)

    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan"
    )

    __table_args__ = (Index("ix_jobs_state_created", "state", "created_at"),
                      Index("ix_jobs_state_updated", "state", "updated_at"))


class JobGroup(Base):
    """Jobs submitted together by `qfarm compare`: one model, several
    methods, and the limits its recommendation honours."""

    __tablename__ = "job_groups"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="compare")
    model: Mapped[str] = mapped_column(Text, nullable=False)
    methods: Mapped[list] = mapped_column(JSON, nullable=False)
    # max_size_bytes / max_vram_bytes (None: no limit).
    limits: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    submitted_by: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    stage: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="events")


class Farm(Base):
    """One row: the farm's identity, made with its database. Queue names and
    messages carry it, so a worker never takes another database's jobs."""

    __tablename__ = "farm"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class Worker(Base):
    """A worker process (one per GPU), as its last heartbeat described it."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    gpu_index: Mapped[int | None] = mapped_column(Integer)
    gpu_name: Mapped[str | None] = mapped_column(String(128))
    gpu_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    gpu_free_bytes: Mapped[int | None] = mapped_column(BigInteger)
    queues: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    current_job: Mapped[str | None] = mapped_column(String(32))
    jobs_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Publication(Base):
    """A job's artifact published to a model hub repo (`qfarm publish`): the
    repo, the commit it is at, and when and by whom. A publish that changed
    nothing on the hub adds no row."""

    __tablename__ = "publications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True)
    endpoint: Mapped[str] = mapped_column(Text, nullable=False)
    repo: Mapped[str] = mapped_column(String(200), nullable=False)
    # The commit id (the hub's revision) the repo's main branch is at.
    revision: Mapped[str] = mapped_column(String(64), nullable=False)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    published_by: Mapped[str] = mapped_column(String(128), nullable=False)
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
