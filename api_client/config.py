"""Settings, read from the environment, each with a single-machine default.

Credentials never live here: S3 keys come from boto3's own chain (environment,
shared credentials file, instance role), and broker/database passwords stay
inside their URLs, which qfarm never writes to its logs, database or manifests
(see api_client/redaction.py).
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path

from api_client.errors import QFarmError, printable


def qfarm_home() -> Path:
    return Path(os.environ.get("QFARM_HOME", Path.home() / ".qfarm")).expanduser()


def _env_int(name: str, default: int, low: int = 1) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QFarmError(f"{name} must be a whole number, not {raw!r}") from None
    if value < low:
        raise QFarmError(f"{name} must be at least {low}, not {value}")
    return value


def _user() -> str:
    user = os.environ.get("QFARM_USER") or getpass.getuser()
    if len(user) > 128 or not user.isprintable() or not user.strip() or any(c.isspace() for c in user):
        raise QFarmError(f"QFARM_USER must be 1 to 128 printable characters without spaces, not {printable(user[:40])!r}"
                         f"{'…' if len(user) > 40 else ''}")
    return user


# A calibration or evaluation text is read whole (by the client at submit,
# by the worker): bounded, so a mistaken 2 GiB file is refused in one line.
DEFAULT_MAX_TEXT_BYTES = 256 * 2**20


def max_text_bytes() -> int:
    """QFARM_MAX_TEXT_BYTES: the largest calibration or evaluation text."""
    return _env_int("QFARM_MAX_TEXT_BYTES", DEFAULT_MAX_TEXT_BYTES)


def input_prefixes() -> list[str] | None:
    """QFARM_INPUT_PREFIXES: the `s3://` prefixes workers may read models
    from with the farm's credentials, comma-separated (None: unset)."""
    raw = os.environ.get("QFARM_INPUT_PREFIXES")
    if raw is None or not raw.strip():
        return None
    prefixes = [p.strip() for p in raw.split(",") if p.strip()]
    bad = [p for p in prefixes if not p.startswith("s3://") or len(p) <= len("s3://")]
    if bad:
        raise QFarmError(f"QFARM_INPUT_PREFIXES holds {bad[0]!r}: give s3:// prefixes, comma-separated")
    return prefixes


@dataclass(frozen=True)
class Settings:
    broker_url: str
    database_url: str
    storage_url: str
    scratch_dir: Path
    user: str
    # A job that runs longer than this is stopped and marked failed; the
    # broker's visibility timeout is derived from it (celery_config.py).
    job_time_limit_s: int = 12 * 3600
    # How many times a job is started before it is failed: a worker that
    # dies under it (OOM kill, lost node) or stops (systemctl restart) hands
    # it to the next worker as a new attempt.
    max_attempts: int = 3
    # A running job whose worker has written no heartbeat for this long, and
    # whose job process has not advanced for as long (api_client/liveness.py),
    # is taken back by any live worker (requeued, or failed as "worker lost").
    heartbeat_timeout_s: int = 120
    # How long a worker retries a database it cannot reach before it gives
    # the job's message back to the broker (never acknowledging it unwritten).
    db_retry_s: int = 300

    @property
    def model_cache_dir(self) -> Path:
        """Where a worker keeps the models it fetched (worker/model_cache.py)."""
        raw = os.environ.get("QFARM_MODEL_CACHE_DIR")
        return Path(raw).expanduser() if raw else qfarm_home() / "model-cache"

    @property
    def heartbeat_interval_s(self) -> float:
        """A worker writes its heartbeat (and reconciles) this often: a
        fraction of the timeout, so one late beat never looks like a death."""
        return max(0.5, min(10.0, self.heartbeat_timeout_s / 6))

    @classmethod
    def from_env(cls) -> Settings:
        home = qfarm_home()
        return cls(
            broker_url=os.environ.get("QFARM_BROKER_URL", "redis://127.0.0.1:6379/0"),
            database_url=os.environ.get("QFARM_DATABASE_URL", f"sqlite:///{home / 'qfarm.db'}"),
            storage_url=os.environ.get("QFARM_STORAGE_URL", (home / "artifacts").as_uri()),
            scratch_dir=Path(os.environ.get("QFARM_SCRATCH_DIR", home / "scratch")).expanduser(),
            user=_user(),
            job_time_limit_s=_env_int("QFARM_JOB_TIME_LIMIT", 12 * 3600),
            max_attempts=_env_int("QFARM_MAX_ATTEMPTS", 3),
            heartbeat_timeout_s=_env_int("QFARM_HEARTBEAT_TIMEOUT", 120, low=2),
            db_retry_s=_env_int("QFARM_DB_RETRY_S", 300, low=0),
        )
