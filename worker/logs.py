"""A worker log a person can read: each library warning once per process,
llm-compressor's per-module INFO lines left out, and a job's end logged as
what happened to the job (Celery would call a cancelled job's task
"succeeded")."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from api_client.redaction import redact

_PROGRESS_BAR = re.compile(r"\d+%\|.*\|")


class OncePerProcess(logging.Filter):
    """Pass a library's record once; qfarm's and Celery's own always."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        # Progress bars some libraries draw whatever TQDM_DISABLE says reach
        # the log through Celery's stdout redirect; job events carry progress.
        if _PROGRESS_BAR.search(str(record.msg)):
            return False
        if record.name.startswith(("qfarm", "celery")) or record.levelno >= logging.ERROR:
            return True
        key = (record.name, str(record.msg))
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def quiet_python_logging() -> None:
    once = OncePerProcess()
    for handler in logging.getLogger().handlers:
        handler.addFilter(once)


def quiet_loguru() -> None:
    """llm-compressor logs through loguru, which it configures on import:
    warnings and above, each message once per process (its "No accelerator
    available!" came 19 times a job), redacted like the rest of the log."""
    try:
        from loguru import logger
    except ImportError:
        return
    seen: set[str] = set()

    def once(record: Any) -> bool:
        message = str(record["message"])
        if message in seen:
            return False
        seen.add(message)
        return True

    def masked(record: Any) -> None:
        record["message"] = redact(str(record["message"]))

    logger.remove()
    logger.configure(patcher=masked)
    logger.add(sys.stderr, level="WARNING", filter=once, format="{time:HH:mm:ss} | {name} | {level} - {message}")


def quiet_autoround() -> None:
    """AutoRound logs through its own handler (not propagated, so not
    filtered above): a line per layer and per fallback tensor. The job
    records what they say (worker/methods/gguf.py); its errors stay. The
    llama.cpp converter it vendors logs as `hf-to-gguf` through the same."""
    for name in ("autoround", "hf-to-gguf"):
        logging.getLogger(name).setLevel(logging.ERROR)


def name_outcomes_in_celery_log() -> None:
    """Celery logs every task that returns as "succeeded"; a job's task
    returns what happened to the job, and the line says "finished"."""
    from celery.app import trace

    trace.LOG_SUCCESS = "Task %(name)s[%(id)s] finished in %(runtime)ss: %(return_value)s"
