"""The job process's own sign of life: a thread that, every heartbeat
interval, writes `progress_at` on the job's row whenever the process's CPU
time grew since the last look.

The worker's heartbeat (worker/heartbeat.py) says the worker lives; this
says the job computes. A reconciler takes a job back only when both are
stale (api_client/infra/liveness.py), so a worker whose heartbeat starved under
CPU load keeps the job its process is still working on.

It also ends an attempt that was superseded: when its write finds the job
no longer running as this attempt (cancelled; taken back while this process
was stopped, to be queued again, claimed by another attempt or failed as
given up after its last attempt), it sends its own process SIGTERM, which
the runner turns into leaving the job to whoever owns it now. Once the
runner ends the job itself (`finishing`), a changed state is its own doing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from api_client.infra.db import Database, JobState, jobs

log = logging.getLogger("qfarm.worker")


class Pulse(threading.Thread):
    def __init__(self, database_url: str, job_id: str, attempt: int, interval_s: float):
        super().__init__(name="qfarm-pulse", daemon=True)
        self.job_id, self.attempt, self.interval_s = job_id, attempt, interval_s
        self._db = Database(database_url, pooled=False)
        self._done = threading.Event()
        self._last_cpu = -1.0

    def __enter__(self) -> Pulse:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join(timeout=5)
        self._db.dispose()

    def finishing(self) -> None:
        """The runner ends the job from here on (succeeded, failed, handed
        back): no more writes, and no state it sets is taken for another's."""
        self._done.set()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - a database outage: the runner's own writes wait it out
                log.debug("job %s: pulse not written: %s", self.job_id, exc)

    def tick(self) -> None:
        cpu = time.process_time()
        if cpu <= self._last_cpu:
            return  # not advancing: nothing to say
        if jobs.progressed(self._db, self.job_id, self.attempt, cpu):
            self._last_cpu = cpu
            return
        job = jobs.get(self._db, self.job_id)
        ours = job.state == JobState.RUNNING.value and job.attempts == self.attempt
        # Read after the state: the runner says `finishing` before it changes it.
        if not ours and not self._done.is_set():
            log.warning("job %s is %s as attempt %d (this process ran attempt %d): stopping this process",
                        self.job_id, job.state, job.attempts, self.attempt)
            self._done.set()
            os.kill(os.getpid(), signal.SIGTERM)
