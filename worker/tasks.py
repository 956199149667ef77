"""The one Celery task: run a job. Its message carries only the job id and
the farm's id; the job's specification is read from the database."""

from __future__ import annotations

import logging
import signal
import time

from celery.exceptions import Reject

from api_client.config import Settings
from api_client.errors import first_line
from api_client.infra.queue import TASK_NAME
from worker import job_process, runner
from worker.app import app

log = logging.getLogger("qfarm.worker")


def _on_sigterm(signum, frame):
    # Once: systemd signals the whole group and the launcher and the pool
    # process pass the signal on too; a second must not interrupt the hand-back.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise runner.Interrupted()


# A job this farm's database does not know (yet) is looked up again this
# often, loudly each time; its message is never dropped (issue 7).
UNKNOWN_DELAY_S = 30
# A message given back waits this long first, so a farm that cannot record
# anything (a database down, at another schema) does not spin.
GIVE_BACK_PAUSE_S = 5
# How the job process tells its outcome (worker/job_process.py).
EXIT_CODES = {runner.Outcome.DONE: 0, runner.Outcome.GIVE_BACK: 3, runner.Outcome.UNKNOWN: 4}


@app.task(name=TASK_NAME, bind=True, max_retries=None)
def run_job(self, job_id: str, farm: str | None = None) -> str:
    settings = Settings.from_env()
    worker = self.request.hostname or "worker"
    # `qfarm cancel` revokes a running job with SIGTERM, and a stopping
    # worker's job gets it too; in the job process the signal becomes an
    # exception, so the runner removes partial uploads and hands the job back.
    ended = job_process.run(lambda: EXIT_CODES[runner.execute(job_id, settings, worker=worker, farm=farm)],
                            {signal.SIGTERM: _on_sigterm})
    if ended.exit_seconds > 1:
        log.info("job %s: its process took %.1f s to exit", job_id, ended.exit_seconds)
    outcome = next((o for o, code in EXIT_CODES.items() if code == ended.code), None)
    if outcome is None:
        how = f"was killed by {ended.killed}" if ended.killed else f"exited with code {ended.code}"
        try:
            outcome = runner.process_lost(job_id, settings, worker, farm, f"its job process ({ended.pid}) {how}",
                                          memory=ended.memory)
        except Exception as exc:  # noqa: BLE001 - an unreadable row: the message must not be acknowledged
            log.error("job %s: its job process %s, and its row cannot be read (%s); giving its message back",
                      job_id, how, first_line(exc))
            outcome = runner.Outcome.GIVE_BACK
    if outcome is runner.Outcome.GIVE_BACK:
        # Not acknowledged: the broker hands the message to the next worker.
        # The pause keeps a farm that cannot record anything from spinning.
        time.sleep(GIVE_BACK_PAUSE_S)
        raise Reject(f"job {job_id} handed back to the broker", requeue=True)
    if outcome is runner.Outcome.UNKNOWN:
        raise self.retry(countdown=UNKNOWN_DELAY_S)
    # The line Celery logs as the task ends (worker/logs.py) says what happened.
    return f"job {job_id} {runner.final_state(job_id, settings)}"
