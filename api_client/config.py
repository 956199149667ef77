"""Settings, read from the environment, each with a single-machine default.

Credentials never live here: S3 keys come from boto3's own chain (environment,
shared credentials file, instance role), and broker/database passwords stay
inside their URLs, which qfarm never writes to its logs, database or manifests
(see `redact`).
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass
from pathlib import Path


def qfarm_home() -> Path:
    return Path(os.environ.get("QFARM_HOME", Path.home() / ".qfarm")).expanduser()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    broker_url: str
    database_url: str
    storage_url: str
    s3_endpoint_url: str | None
    scratch_dir: Path
    user: str
    # A job that runs longer than this is stopped and marked failed; the
    # broker's visibility timeout is derived from it (celery_config.py).
    job_time_limit_s: int = 12 * 3600
    # How often a job is retried after its worker died under it (OOM kill,
    # lost node) before it is marked failed.
    max_attempts: int = 2

    @classmethod
    def from_env(cls) -> "Settings":
        home = qfarm_home()
        return cls(
            broker_url=os.environ.get("QFARM_BROKER_URL", "redis://127.0.0.1:6379/0"),
            database_url=os.environ.get("QFARM_DATABASE_URL", f"sqlite:///{home / 'qfarm.db'}"),
            storage_url=os.environ.get("QFARM_STORAGE_URL", (home / "artifacts").as_uri()),
            s3_endpoint_url=os.environ.get("QFARM_S3_ENDPOINT_URL") or None,
            scratch_dir=Path(os.environ.get("QFARM_SCRATCH_DIR", home / "scratch")).expanduser(),
            user=os.environ.get("QFARM_USER") or getpass.getuser(),
            job_time_limit_s=_env_int("QFARM_JOB_TIME_LIMIT", 12 * 3600),
            max_attempts=_env_int("QFARM_MAX_ATTEMPTS", 2),
        )


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/@\s]+)@")


def redact(text: str) -> str:
    """Hide the user:password part of every URL in `text`."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
