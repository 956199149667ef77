"""The Celery application shared by the workers and the client (which only
sends to it)."""

import logging
import os
import sys

from celery import Celery
from celery.signals import worker_init

import celery_config

app = Celery("qfarm", include=["worker.tasks"])
app.config_from_object(celery_config)
log = logging.getLogger("qfarm.worker")


@worker_init.connect
def _preload(**_kwargs) -> None:
    # worker_init runs in the worker's parent before its pool forks the job
    # processes, which is where the imports must happen (worker/preload.py).
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
    log.info("preloaded %d modules in %.1f s%s", len(done.loaded), done.seconds,
             f"; left to the jobs, as importing them initialises CUDA: {', '.join(done.skipped)}" if done.skipped else "")
