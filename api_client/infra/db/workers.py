"""Worker heartbeats: each worker process (one per GPU) writes its row every
few seconds, naming the job it runs. A running job whose worker stopped
writing is found by any live worker's reconciler (worker/reconcile.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update

from api_client.infra.db.database import Database
from api_client.infra.db.jobs import aware
from api_client.infra.db.models import Worker, utcnow


@dataclass(frozen=True)
class Beat:
    name: str
    host: str
    pid: int
    gpu_index: int | None
    gpu_name: str | None
    gpu_total_bytes: int | None
    gpu_free_bytes: int | None
    queues: list[str]
    current_job: str | None
    jobs_done: int


def heartbeat(db: Database, beat: Beat) -> None:
    now = utcnow()
    with db.session() as s:
        row = s.get(Worker, beat.name)
        if row is None:
            row = Worker(name=beat.name, started_at=now)
            s.add(row)
        for key, value in vars(beat).items():
            setattr(row, key, value)
        row.heartbeat_at, row.stopped_at = now, None


def stopped(db: Database, name: str) -> None:
    with db.session() as s:
        s.execute(update(Worker).where(Worker.name == name).values(stopped_at=utcnow(), current_job=None))


def get(db: Database, name: str | None) -> Worker | None:
    if not name:
        return None
    with db.session() as s:
        return s.get(Worker, name)


def alive(worker: Worker | None, timeout_s: float) -> bool:
    """Whether `worker` wrote a heartbeat within `timeout_s` and has not stopped."""
    if worker is None or worker.stopped_at is not None:
        return False
    return utcnow() - aware(worker.heartbeat_at) <= timedelta(seconds=timeout_s)


def live(db: Database, timeout_s: float) -> list[Worker]:
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    with db.session() as s:
        return list(s.scalars(select(Worker).where(Worker.heartbeat_at >= cutoff, Worker.stopped_at.is_(None))
                              .order_by(Worker.host, Worker.name)))


def every(db: Database, limit: int = 500) -> list[Worker]:
    """Every worker row, the newest heartbeat first (live, lost and stopped)."""
    with db.session() as s:
        return list(s.scalars(select(Worker).order_by(Worker.heartbeat_at.desc()).limit(limit)))


def forget_older_than(db: Database, days: float) -> int:
    """Drop the rows of workers silent for `days` (each start of a worker
    writes a new row: names carry the launcher's pid)."""
    cutoff = utcnow() - timedelta(days=days)
    with db.session() as s:
        result = s.execute(delete(Worker).where(Worker.heartbeat_at < cutoff))
        return int(getattr(result, "rowcount", 0) or 0)


def status(worker: Worker, timeout_s: float) -> str:
    if worker.stopped_at is not None:
        return "stopped"
    return "live" if alive(worker, timeout_s) else "lost"


def to_dict(w: Worker) -> dict[str, Any]:
    return {k: (aware(v).isoformat() if hasattr(v, "isoformat") else v)
            for k, v in ((c, getattr(w, c)) for c in (
                "name", "host", "pid", "gpu_index", "gpu_name", "gpu_total_bytes", "gpu_free_bytes", "queues", "started_at",
                "heartbeat_at", "current_job", "jobs_done", "stopped_at"))}
