"""`qfarm worker …`: the worker's commands, which the client's CLI loads only
when one is run (api_client/cli/commands.py), so a client install without torch and
the engines still runs every other command."""

from __future__ import annotations

import importlib.util
import sys

import click

from api_client.errors import QFarmError

# What a worker needs beyond the client: `pip install 'qfarm[worker]'`.
WORKER_LIBRARIES = ("torch", "transformers", "llmcompressor", "gptqmodel", "bitsandbytes")


@click.group()
def worker() -> None:
    """Run GPU workers."""


@worker.command("start")
@click.option("--gpus", default="auto", show_default=True, help="all, cpu, auto (all GPUs, or the CPU without one) or indices: 0,1.")
@click.option("--allow-remote-code", is_flag=True,
              help="Also take jobs that run a model's own code (auto_map, *.py): only on hosts you trust with it.")
@click.option("--cpu-workers", type=int, default=1, show_default=True,
              help="With --gpus cpu: how many CPU workers, each with an equal share of the host's cores as its threads.")
@click.option("--loglevel", default="INFO", show_default=True, help="Celery's log level: DEBUG, INFO, WARNING or ERROR.")
def start(gpus: str, allow_remote_code: bool, cpu_workers: int, loglevel: str) -> None:
    """Start one worker process per GPU (concurrency 1, pinned with CUDA_VISIBLE_DEVICES)."""
    missing = [m for m in WORKER_LIBRARIES if importlib.util.find_spec(m) is None]
    if missing:
        raise QFarmError(f"this install has no worker libraries ({', '.join(missing)}): pip install 'qfarm[worker]'")
    from api_client.config import Settings
    from api_client.infra import queue
    from api_client.infra.db import Database, jobs
    from worker import launcher

    # Every QFARM_* variable is checked here: a malformed one (a memory
    # limit, a time limit) stops the start in one line, not every job.
    settings = Settings.from_env()
    db = Database(settings.database_url)
    try:
        db.check()
        farm = jobs.farm_id(db)
    finally:
        db.dispose()
    plans = launcher.plan(gpus, farm, remote_code=allow_remote_code, cpu_workers=cpu_workers)
    held = launcher.hold_devices(plans, settings.home)
    queue.check_broker(settings.broker_url)
    sys.exit(launcher.run(plans, loglevel, echo=lambda m: click.echo(m, err=True), held=held))
