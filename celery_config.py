"""Every Celery setting of qfarm, in one place.

Jobs are long (minutes to hours), heavy (a whole GPU each) and few, which
turns several of Celery's defaults, made for many short tasks, around.

A function of the settings, not module globals read at import: the workers
(worker/app.py) and the sending client (api_client/infra/queue.py) each build it
from `Settings.from_env()` when they make their Celery app. Only
api_client.config is imported, so this module sits below the rest of qfarm.
"""

from __future__ import annotations

from typing import Any

from api_client.config import PRIORITY_STEPS, Settings


def celery_settings(settings: Settings) -> dict[str, Any]:
    """The Celery configuration (`app.config_from_object`) for `settings`."""
    return {
        "broker_url": settings.broker_url,
        # Fail fast when the broker is down, so `qfarm submit` says so at once.
        "broker_connection_timeout": 5,
        "broker_connection_retry_on_startup": True,

        # The job row in SQL is the result; Celery's result backend would only be a
        # second, weaker copy of it.
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],

        # Acknowledge a job's message only when the job has finished: if the worker
        # dies mid-job (OOM kill, lost node), the broker hands the job to another
        # worker instead of losing it. The runner counts attempts, so a job that kills
        # every worker it lands on fails after QFARM_MAX_ATTEMPTS instead of looping.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A finished job's message is acknowledged whether the job failed or not: the
        # failure is recorded in the database, and re-running it would fail again.
        "task_acks_on_failure": True,
        "task_acks_on_timeout": True,

        # One process per GPU, one job at a time, and no job reserved while another
        # runs: a reserved message would wait hours behind the running job while an
        # idle GPU elsewhere could take it.
        "worker_concurrency": 1,
        "worker_prefetch_multiplier": 1,
        # The pool process lives on between jobs and forks a fresh process for each
        # (worker/job_process.py): CUDA contexts, allocator caches and library
        # globals from one job never weigh on the next, and no pool process has to be
        # replaced between jobs, which left the GPU idle for seconds.
        "worker_max_tasks_per_child": None,

        # The longest a job may run. The soft limit raises inside the job (it is
        # recorded as failed, with the reason); the hard limit kills the process if
        # the soft one is not honoured in time.
        "task_soft_time_limit": settings.job_time_limit_s,
        "task_time_limit": settings.job_time_limit_s + 600,

        # Redis re-delivers an unacknowledged message after the visibility timeout.
        # With late acknowledgement, a job still running when it expires would start
        # a second time on another GPU, so it must outlast the longest job.
        "broker_transport_options": {
            "visibility_timeout": settings.job_time_limit_s + 3600,
            # --priority high/normal/low (api_client/infra/queue.py): a list per step, the
            # lowest step served first.
            "priority_steps": list(PRIORITY_STEPS),
        },

        # If the worker loses the broker, Redis gives its unacknowledged message back
        # to the queue and another worker will start the same job; stopping ours
        # keeps one runner per job (the job restarts, counted as a new attempt).
        "worker_cancel_long_running_tasks_on_connection_loss": True,

        # Workers announce themselves so `qfarm submit` can tell whether any worker
        # serves a capability queue (FP8 needs Ada/Hopper).
        "worker_enable_remote_control": True,
        # Task events on, and a "sent" event from the client, so Celery's own
        # monitor (Flower, docker/compose.yml's `monitoring` profile) shows every job
        # from submit to end; the job record itself stays in SQL.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }
