"""The one Celery task: run a job. Its message carries only the job id and
the farm's id; the job's specification is read from the database."""

from __future__ import annotations

import os
import signal
import time

from celery.exceptions import Reject

from api_client.config import Settings
from api_client.queue import TASK_NAME
from worker import runner
from worker.app import app


def _on_sigterm(signum, frame):
    # Once: systemd signals the whole group and the launcher passes the
    # signal on too; a second one must not interrupt the hand-back.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise runner.Interrupted()


def _exit_quietly(signum, frame):
    os._exit(0)


# A job this farm's database does not know (yet) is looked up again this
# often, loudly each time; its message is never dropped (issue 7).
UNKNOWN_DELAY_S = 30


@app.task(name=TASK_NAME, bind=True, max_retries=None)
def run_job(self, job_id: str, farm: str | None = None) -> str:
    # `qfarm cancel` revokes a running job with SIGTERM, and a stopping
    # worker's job gets it too; turning the signal into an exception lets
    # the runner remove partial uploads and hand the job back.
    signal.signal(signal.SIGTERM, _on_sigterm)
    outcome = runner.execute(job_id, Settings.from_env(), worker=self.request.hostname or "worker", farm=farm)
    # The job is over: billiard retires this process (one job per process)
    # with a SIGTERM, which now ends it at once and cleanly.
    signal.signal(signal.SIGTERM, _exit_quietly)
    if outcome is runner.Outcome.GIVE_BACK:
        # Not acknowledged: the broker hands the message to the next worker.
        # The pause keeps a farm that cannot record anything from spinning.
        time.sleep(5)
        raise Reject(f"job {job_id} handed back to the broker", requeue=True)
    if outcome is runner.Outcome.UNKNOWN:
        raise self.retry(countdown=UNKNOWN_DELAY_S)
    # The line Celery logs as the task ends (worker/logs.py) says what happened.
    return f"job {job_id} {runner.final_state(job_id, Settings.from_env())}"
