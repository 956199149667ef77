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

from api_client import config
from celery_config import celery_settings

app = Celery("qfarm", include=["worker.tasks"])
# Read as the worker process imports this module, as celery_config's module
# globals were: `qfarm worker start` has checked the same settings already.
app.config_from_object(celery_settings(config.Settings.from_env()))
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
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, config.PRELOAD.name: "0"})
    from worker import logs

    logs.quiet_loguru()  # llm-compressor configured it as it was imported
    log.info("preloaded %d modules in %.1f s, %d objects frozen out of the collector%s", len(done.loaded), done.seconds,
             done.frozen,
             f"; left to the jobs, as importing them initialises CUDA: {', '.join(done.skipped)}" if done.skipped else "")


@worker_ready.connect
def _start_heartbeat(sender=None, **_kwargs) -> None:
    from worker import heartbeat

    heartbeat.start(getattr(sender, "hostname", None) or config.Settings.from_env().worker_name)


@worker_shutdown.connect
def _stop_heartbeat(**_kwargs) -> None:
    from worker import heartbeat

    heartbeat.stop()
