"""The Celery application shared by the workers and the client (which only
sends to it)."""

import logging
import os
import sys

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    worker_ready,
    worker_shutdown,
)

import celery_config

app = Celery("qfarm", include=["worker.tasks"])
app.config_from_object(celery_config)
log = logging.getLogger("qfarm.worker")


@after_setup_logger.connect
def _quiet_logs(**_kwargs) -> None:
    from api_client.redaction import redact_logging
    from worker import logs

    logs.quiet_python_logging()
    # Every line of the worker's log (the job's, the libraries', what Celery
    # captures of stdout and stderr) is redacted as it is written.
    redact_logging()
    logs.name_outcomes_in_celery_log()


@after_setup_task_logger.connect
def _redact_task_log(logger=None, **_kwargs) -> None:
    # Celery's task logger has handlers of its own (it does not propagate).
    from api_client.redaction import redact_logging

    if logger is not None:
        redact_logging(logger)


@celeryd_after_setup.connect
def _preload(**_kwargs) -> None:
    # Sent in the worker's parent once logging is set up and before its pool
    # forks the job processes: where the imports must happen (worker/preload.py).
    from worker import preload

    if not preload.enabled():
        return
    try:
        done = preload.preload()
    except preload.PreloadError as exc:
        # This process can no longer fork processes that use the GPU: start
        # it again, without the preload, rather than fail every job.
        log.error("%s; restarting the worker with QFARM_PRELOAD=0", exc)
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "QFARM_PRELOAD": "0"})
    from worker import logs

    logs.quiet_loguru()  # llm-compressor configured it as it was imported
    log.info("preloaded %d modules in %.1f s%s", len(done.loaded), done.seconds,
             f"; left to the jobs, as importing them initialises CUDA: {', '.join(done.skipped)}" if done.skipped else "")


@worker_ready.connect
def _start_heartbeat(sender=None, **_kwargs) -> None:
    from worker import heartbeat

    heartbeat.start(getattr(sender, "hostname", None) or os.environ.get("QFARM_WORKER_NAME", "worker"))


@worker_shutdown.connect
def _stop_heartbeat(**_kwargs) -> None:
    from worker import heartbeat

    heartbeat.stop()
