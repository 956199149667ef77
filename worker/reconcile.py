"""Keeping the database and the broker in agreement, from any live worker.

Every worker's heartbeat thread (worker/heartbeat.py) calls `reconcile`
every few seconds; a Redis lock lets one of them do it per interval. It
mends what a crash or an outage leaves behind:

- a running job that is provably lost (api_client/infra/liveness.py: its job
  process is gone, or its worker's heartbeat and the job's own progress both
  stopped, or its live worker no longer runs it) goes back to the queue as a
  new attempt, or is failed as "worker lost" once its attempts are used up;
- a queued job with no message in the broker (Redis restarted without its
  data) gets its message again;
- a partial upload whose removal failed (the store was down) is removed.

Handing a job back is api_client/infra/lifecycle.py's, shared with the job process
that is stopped (SIGTERM) and with `qfarm requeue`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from api_client.config import Settings
from api_client.errors import first_line
from api_client.infra import lifecycle, liveness, queue
from api_client.infra.db import Database, JobState, jobs, workers
from api_client.infra.storage import open_store

log = logging.getLogger("qfarm.reconcile")


_last_forget = [0.0]


def reconcile(db: Database, settings: Settings, farm: str, judge_lost: bool = True) -> None:
    """One round. `judge_lost` is False while this worker's own heartbeat
    has been back for less than a timeout (after a database outage every
    heartbeat is stale: the others need a timeout to write theirs)."""
    steps: list[tuple[str, Callable[[], object]]] = [("queued jobs without a message", lambda: _queued_without_message(db, settings, farm)),
             ("partial uploads", lambda: _pending_cleanups(db, settings))]
    if judge_lost:
        steps.insert(0, ("running jobs of lost workers", lambda: _lost_running(db, settings, farm)))
    if time.monotonic() - _last_forget[0] > 3600:
        _last_forget[0] = time.monotonic()
        steps.append(("old worker rows", lambda: workers.forget_older_than(db, days=7)))
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - one step's failure (Redis, the store) must not stop the others
            log.warning("reconcile, %s: %s", what, first_line(exc))


def _lost_running(db: Database, settings: Settings, farm: str) -> None:
    for job in jobs.running(db):
        reason = liveness.lost_reason(job, workers.get(db, job.worker), settings)
        if reason is not None and lifecycle.hand_back(db, job, reason, settings, farm):
            log.warning("job %s: %s", job.id, reason)


def _queued_without_message(db: Database, settings: Settings, farm: str) -> None:
    # A submit writes its row a moment before its message; leave it time.
    stale = jobs.queued_since(db, older_than_s=max(5.0, 3 * settings.heartbeat_interval_s))
    if not stale:
        return
    waiting = queue.waiting_job_ids(settings.broker_url, sorted({j.queue for j in stale}))
    if waiting is None:
        return
    for job in stale:
        if job.id in waiting:
            continue
        if not lifecycle.send(settings, job, farm):
            continue
        jobs.note(db, job.id, "the broker held no message for this queued job (was Redis restarted?): sent it again")
        jobs.record(db, job.id)  # touches updated_at, so it is not sent again at once
        log.warning("job %s was queued with no message in the broker; sent it again", job.id)


def _pending_cleanups(db: Database, settings: Settings) -> None:
    for job in jobs.pending_cleanups(db):
        if job.state in (JobState.RUNNING.value, JobState.SUCCEEDED.value):
            continue  # an attempt that runs or succeeded owns the prefix now
        uri = job.cleanup_uri or ""
        try:
            store = open_store(settings.storage_url)
            store.delete_prefix(store.key_of(uri))
        except Exception as exc:  # noqa: BLE001 - tried again next time
            log.info("partial upload of job %s still cannot be removed: %s", job.id, first_line(exc))
            continue
        jobs.record(db, job.id, cleanup_uri=None)
        jobs.note(db, job.id, f"partial upload {uri} removed")
        log.info("job %s: partial upload %s removed", job.id, uri)
