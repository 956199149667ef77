"""Handing a job back to the queue: for the next worker, as a new attempt,
with the reason as an event. The runner does it when its process is stopped
(SIGTERM), every worker's reconciler when a worker is lost, `qfarm requeue`
by hand; all three through here, so QFARM_MAX_ATTEMPTS holds for each."""

from __future__ import annotations

import logging

from api_client.config import Settings
from api_client.errors import first_line
from api_client.infra import queue
from api_client.infra.db import Database, Job, JobState, jobs

log = logging.getLogger("qfarm.lifecycle")


def hand_back(db: Database, job: Job, reason: str, settings: Settings, farm: str) -> bool:
    """Return a running job to the queue for the next worker (and send its
    message), or fail it once QFARM_MAX_ATTEMPTS runs were started. False if
    the job moved on meanwhile (another reconciler, a cancel)."""
    if job.attempts >= settings.max_attempts:
        error = f"{reason}; given up after {job.attempts} attempts (QFARM_MAX_ATTEMPTS={settings.max_attempts})"
        return jobs.transition(db, job.id, expect=[JobState.RUNNING], expect_attempts=job.attempts,
                               state=JobState.FAILED, message=error, error=error)
    if not jobs.transition(db, job.id, expect=[JobState.RUNNING], expect_attempts=job.attempts, state=JobState.QUEUED,
                           message=f"{reason}; handed to the next worker as attempt {job.attempts + 1} "
                                   f"of {settings.max_attempts}", **jobs.fresh_attempt()):
        return False
    send(settings, job, farm)
    return True


def send(settings: Settings, job: Job, farm: str) -> bool:
    try:
        queue.enqueue(settings.broker_url, job.id, job.queue, farm, job.priority)
        return True
    except Exception as exc:  # noqa: BLE001 - the next reconcile sends it
        log.warning("job %s is queued but its message could not be sent (%s); the reconciler will send it",
                    job.id, first_line(exc))
        return False
