"""The Celery application shared by the workers and the client (which only
sends to it)."""

from celery import Celery

import celery_config

app = Celery("qfarm", include=["worker.tasks"])
app.config_from_object(celery_config)
