"""Talking to the broker: is it there, queue a job, stop a job, which queues
live workers serve."""

from __future__ import annotations

from functools import lru_cache

from api_client.config import redact
from api_client.errors import ServiceUnavailable

TASK_NAME = "qfarm.run_job"


@lru_cache(maxsize=8)
def app(broker_url: str):
    """A sending-only Celery app with the workers' settings (celery_config)."""
    from celery import Celery

    import celery_config

    celery = Celery("qfarm", set_as_current=False)
    celery.config_from_object(celery_config)
    celery.conf.broker_url = broker_url
    return celery


def check_broker(broker_url: str) -> None:
    try:
        with app(broker_url).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=5)
    except Exception as exc:  # kombu raises OperationalError, socket errors…
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnavailable(f"cannot reach the broker at {redact(broker_url)}: {reason}") from None


def enqueue(broker_url: str, job_id: str, queue: str) -> None:
    # The job id is the task id, so `qfarm cancel` can revoke it by name.
    app(broker_url).send_task(TASK_NAME, args=[job_id], task_id=job_id, queue=queue,
                              retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2})


def revoke(broker_url: str, job_id: str, terminate: bool) -> None:
    app(broker_url).control.revoke(job_id, terminate=terminate, signal="SIGTERM")


def served_queues(broker_url: str, timeout: float = 2.0) -> set[str]:
    """Queues consumed by the workers that answer within `timeout`."""
    replies = app(broker_url).control.inspect(timeout=timeout).active_queues() or {}
    return {q["name"] for queues in replies.values() for q in queues}
