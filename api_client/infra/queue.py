"""Talking to the broker: is it there, queue a job, stop a job, which queues
live workers serve, and which jobs have a message waiting.

The database is the record; a message only says "run job X". So a message
can be lost (Redis restarted without persistence) or doubled (a reconciler
and a hand-back both sending one) without harm: the reconciler re-sends a
queued job's lost message, and a worker's claim is a conditional update, so
a doubled message runs a job once.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from api_client.config import PRIORITY_STEPS, Settings
from api_client.errors import ServiceUnavailable, first_line
from api_client.redaction import redact

TASK_NAME = "qfarm.run_job"
# --priority → the message's priority. On Redis, kombu keeps a list per
# priority step (config.PRIORITY_STEPS: 0, 3, 6, 9) and a worker pops the lowest
# number first; within a step, the order of submission holds.
PRIORITIES = {"high": 0, "normal": 3, "low": 9}


@lru_cache(maxsize=8)
def app(broker_url: str) -> Any:
    """A sending-only Celery app with the workers' settings (celery_config)."""
    from celery import Celery

    from celery_config import celery_settings

    celery = Celery("qfarm", set_as_current=False)
    celery.config_from_object(celery_settings(Settings.from_env()))
    celery.conf.broker_url = broker_url
    return celery


def check_broker(broker_url: str) -> None:
    try:
        with app(broker_url).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=5)
    except Exception as exc:  # noqa: BLE001 - kombu raises OperationalError, socket errors…
        raise ServiceUnavailable(f"cannot reach the broker at {redact(broker_url)}: {first_line(exc)}") from None


def enqueue(broker_url: str, job_id: str, queue: str, farm: str, priority: str = "normal") -> None:
    """Send the message that runs `job_id`. The job id is also the task id,
    so `qfarm cancel` can revoke it by name; the farm id lets a worker refuse
    a message that is not its farm's."""
    app(broker_url).send_task(TASK_NAME, args=[job_id], kwargs={"farm": farm}, task_id=job_id, queue=queue,
                              priority=PRIORITIES[priority],
                              retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2})


def revoke(broker_url: str, job_id: str, terminate: bool) -> None:
    app(broker_url).control.revoke(job_id, terminate=terminate, signal="SIGTERM")


def served_queues(broker_url: str, timeout: float = 2.0) -> set[str]:
    """Queues consumed by the workers that answer within `timeout`."""
    replies = app(broker_url).control.inspect(timeout=timeout).active_queues() or {}
    return {q["name"] for queues in replies.values() for q in queues}


def waiting_job_ids(broker_url: str, queues: list[str]) -> set[str] | None:
    """Ids of the jobs with a message in the broker: waiting in one of
    `queues`, or delivered to a worker and not yet acknowledged.

    Reads kombu's Redis layout (a list per queue and priority step, the
    `unacked` hash); None for another broker, where this cannot be known.
    """
    if not broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        ids: set[str] = set()
        sep = "\x06\x16"  # kombu's separator between a queue's name and its priority step
        keys = [q if step == 0 else f"{q}{sep}{step}" for q in queues for step in PRIORITY_STEPS]
        for key in keys:
            for raw in client.lrange(key, 0, -1):
                try:
                    ids.add(_task_id(json.loads(raw)))
                except ValueError:
                    continue
        for raw in client.hvals("unacked"):
            try:
                ids.add(_task_id(json.loads(raw)[0]))
            except (ValueError, IndexError, TypeError):
                continue
        ids.discard("")
        return ids
    finally:
        client.close()


def _task_id(message: Any) -> str:
    headers = message.get("headers") if isinstance(message, dict) else None
    return str(headers.get("id") or "") if isinstance(headers, dict) else ""
