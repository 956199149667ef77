"""A worker's heartbeat: two threads in the Celery worker's parent process.

The beat, every QFARM_HEARTBEAT_TIMEOUT / 6 seconds (at most 10),

- writes the worker's row (host, GPU, pid, the job it runs, jobs done);
- stops its job if the job was cancelled while the broker could not carry
  the revoke (`qfarm cancel` with Redis down marks the row only), or was
  taken over by another worker.

It does nothing else, so nothing slow delays it, and it asks the kernel for
a higher priority than the jobs' (where the worker may: root, or
CAP_SYS_NICE), so a host whose CPUs are saturated still hears from it. A
heartbeat that stays stale does not alone lose the worker its job: its job
process says by itself that it advances (worker/pulse.py,
api_client/infra/liveness.py).

The reconciler thread runs the farm's reconciler (worker/reconcile.py), one
worker at a time, as often: its Redis, S3 and database calls can take long,
and must not hold up the beat.

Both live in the parent, not the job process: the parent outlives every
job, so a job process that dies is seen missing from a heartbeat that goes
on, and a parent that dies stops the heartbeat itself.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from api_client.config import Settings
from api_client.errors import first_line
from api_client.infra.db import Database, JobState, jobs, workers
from api_client.infra.db.jobs import aware
from api_client.infra.db.models import utcnow
from worker import gpu, reconcile

log = logging.getLogger("qfarm.heartbeat")


def _active() -> list:
    from celery.worker import state

    return list(state.active_requests)


def _jobs_done() -> int:
    from celery.worker import state

    return int(sum(state.total_count.values()))


# The beat thread's nice value, where the worker may set it: above the jobs'
# (0), so CPU-bound jobs never starve it.
BEAT_NICE = -5


class Heartbeat:
    def __init__(self, name: str, settings: Settings):
        self.worker_name, self.settings = name, settings
        self._stop_event = threading.Event()
        self._db = Database(settings.database_url, pooled=False)
        self._farm: str | None = None
        self._failing = False
        self._healthy_since = time.monotonic()
        self._redis: Any = None
        index = gpu.worker_gpu_index()
        info = next((g for g in gpu.nvml_gpus() if g.index == index), None) if index is not None else None
        self._gpu = (index, info.name if info else ("cpu" if index is None else None), info.total_bytes if info else None)
        self._queues = list(settings.queues)
        self._threads = [threading.Thread(target=self._beat_loop, name="qfarm-heartbeat", daemon=True),
                         threading.Thread(target=self._reconcile_loop, name="qfarm-reconciler", daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop_event.set()
        for t in self._threads:
            t.join(timeout=10)
        try:
            workers.stopped(self._db, self.worker_name)
        except Exception as exc:  # noqa: BLE001 - the timeout finds it anyway
            log.warning("could not mark worker %s stopped: %s", self.worker_name, first_line(exc))
        self._db.dispose()

    def _beat_loop(self) -> None:
        _raise_priority()
        while True:
            try:
                self.beat()
                if self._failing:
                    log.warning("heartbeat: written again")
                    # Every worker's heartbeat went stale with ours: give them
                    # a whole timeout to write theirs before judging any lost.
                    self._healthy_since = time.monotonic()
                self._failing = False
            except Exception as exc:  # noqa: BLE001 - a heartbeat thread must outlive any outage
                if not self._failing:
                    log.warning("heartbeat: %s (retrying every %.0f s)", first_line(exc), self.settings.heartbeat_interval_s)
                self._failing = True
            if self._stop_event.wait(self.settings.heartbeat_interval_s):
                return

    def _reconcile_loop(self) -> None:
        while not self._stop_event.wait(self.settings.heartbeat_interval_s):
            if self._failing:
                continue  # the database does not hear us: nothing to mend from here
            try:
                if self._farm is None:
                    self._farm = jobs.farm_id(self._db)
                if self._take_turn():
                    judge_lost = time.monotonic() - self._healthy_since >= self.settings.heartbeat_timeout_s
                    reconcile.reconcile(self._db, self.settings, self._farm, judge_lost=judge_lost)
            except Exception as exc:  # noqa: BLE001 - tried again next interval
                log.warning("reconcile: %s", first_line(exc))

    def beat(self) -> None:
        active = _active()
        current = active[0] if active else None
        index, name, total = self._gpu
        workers.heartbeat(self._db, workers.Beat(
            name=self.worker_name, host=socket.gethostname(), pid=os.getpid(), gpu_index=index, gpu_name=name,
            gpu_total_bytes=total, gpu_free_bytes=gpu.nvml_free_bytes(index) if index is not None else None,
            queues=self._queues, current_job=current.id if current else None,
            jobs_done=_jobs_done(),
        ))
        if current is not None:
            self._stop_if_not_ours(current)

    def _stop_if_not_ours(self, request) -> None:
        """Stop the job process when its job is no longer running here: a
        cancel the broker could not carry, or another worker took the job
        over (this one's heartbeat was lost for a while)."""
        try:
            job = jobs.get(self._db, request.id)
        except Exception:  # noqa: BLE001 - not a job of ours to judge
            return
        pid = getattr(request, "worker_pid", None)
        # A job claimed a moment ago may not show this worker yet: judge it
        # once it was last changed a beat ago or more.
        # A queued job is about to be claimed by this very request (or its
        # message is a copy the claim drops): never stopped here.
        settled = job.updated_at is not None and (utcnow() - aware(job.updated_at)).total_seconds() > self.settings.heartbeat_interval_s
        elsewhere = job.state == JobState.RUNNING.value and job.worker != self.worker_name
        ended = job.state in (JobState.SUCCEEDED.value, JobState.FAILED.value)
        if pid and (job.state == JobState.CANCELLED.value or (settled and (elsewhere or ended))):
            log.info("job %s is %s on %s: stopping its process %s", job.id, job.state, job.worker, pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _take_turn(self) -> bool:
        """One reconciler per interval across the farm (a Redis lock that
        expires by itself), so workers do not send the same message twice."""
        if not self.settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
            return True
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            ttl_ms = int(self.settings.heartbeat_interval_s * 900)
            return bool(self._redis.set(f"qfarm:{self._farm}:reconciler", self.worker_name, nx=True, px=max(ttl_ms, 100)))
        except Exception:  # noqa: BLE001 - no broker: the database still holds the truth; try next beat
            return False


def _raise_priority() -> None:
    """Give the calling thread BEAT_NICE where the worker may (Linux sets a
    thread's nice value by its thread id); otherwise it keeps the default."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BEAT_NICE)
    except (OSError, AttributeError) as exc:
        log.debug("heartbeat keeps its priority (%s)", exc)


_current: Heartbeat | None = None


def start(name: str) -> None:
    global _current
    _current = Heartbeat(name, Settings.from_env())
    _current.start()
    log.info("heartbeat every %.1f s (timeout %d s) for %s", _current.settings.heartbeat_interval_s,
             _current.settings.heartbeat_timeout_s, name)


def stop() -> None:
    if _current is not None:
        _current.stop()


__all__ = ["start", "stop", "Heartbeat"]
