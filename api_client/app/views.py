"""The rows the `Client` returns, as the people reading them see them: the
row types (named here so the CLI needs no database module), their JSON
form, and the time and liveness helpers a view needs. The database layer
keeps the one definition of each; this is the application's face of it."""

from __future__ import annotations

from typing import Any

from api_client.infra.db import Job
from api_client.infra.db.groups import PREFIX as GROUP_PREFIX
from api_client.infra.db.jobs import aware
from api_client.infra.db.jobs import to_dict as job_dict
from api_client.infra.db.models import JobGroup, Publication, Worker, utcnow
from api_client.infra.db.workers import status as worker_status
from api_client.infra.db.workers import to_dict as _worker_dict

__all__ = ["GROUP_PREFIX", "Job", "JobGroup", "Publication", "Worker", "aware", "job_dict", "utcnow", "worker_dict",
           "worker_status"]


def worker_dict(w: Worker, timeout_s: float, stage: str | None) -> dict[str, Any]:
    """A worker's row as `qfarm workers --json` prints it: with whether it
    is live (by the heartbeat timeout) and the stage of its current job."""
    return {**_worker_dict(w), "status": worker_status(w, timeout_s), "current_stage": stage}
