"""The one Celery task: run a job. Its message carries only the job id; the
job's specification is read from the database."""

from __future__ import annotations

import signal

from api_client.config import Settings
from api_client.queue import TASK_NAME
from worker.app import app
from worker import runner


def _on_sigterm(signum, frame):
    raise runner.Interrupted()


@app.task(name=TASK_NAME, bind=True)
def run_job(self, job_id: str) -> None:
    # `qfarm cancel` revokes a running job with SIGTERM; turning the signal
    # into an exception lets the runner remove partial uploads and its files.
    signal.signal(signal.SIGTERM, _on_sigterm)
    runner.execute(job_id, Settings.from_env(), worker=self.request.hostname or "worker")
