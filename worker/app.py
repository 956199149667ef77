"""The Celery application shared by the workers and the client (which only
sends to it)."""

import logging

from celery import Celery
from celery.signals import worker_init

import celery_config

app = Celery("qfarm", include=["worker.tasks"])
app.config_from_object(celery_config)


@worker_init.connect
def _preload(**_kwargs) -> None:
    # worker_init runs in the worker's parent before its pool forks the job
    # processes, which is where the imports must happen (worker/preload.py).
    from worker import preload

    if preload.enabled():
        seconds = preload.preload()
        logging.getLogger("qfarm.worker").info("preloaded the quantization libraries in %.1f s", seconds)
