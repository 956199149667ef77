"""Settings: every QFARM_* variable, declared once, read from the environment.

The declarations (`VARIABLES`) are the one place a QFARM_* variable is named
with its type, default and meaning; `Settings.from_env()` is built from them,
`qfarm config` shows them, and docs/operations.md's table lists them (tests/test_config.py
holds all three to it). Other modules take their values from `Settings` or a
function here and never read the environment themselves, so a malformed value
is refused in one line wherever it is first needed, with the same words.

Values are read at each call, never cached at import: a worker's launcher sets
variables for its workers, and tests change the environment between calls.

Credentials never live here: S3 keys come from boto3's own chain (environment,
shared credentials file, instance role), and broker/database passwords stay
inside their URLs, which qfarm never writes to its logs, database or manifests
(see api_client/redaction.py); `qfarm config` shows them masked.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from api_client.errors import QFarmError, SpecError, printable
from api_client.redaction import redact
from api_client.sizes import parse_size

T = TypeVar("T")

# --priority high/normal/low (api_client/infra/queue.py): kombu keeps a list per
# step on Redis and serves the lowest first. Here, not in queue.py, so that
# celery_config.py needs nothing of api_client beyond this module.
PRIORITY_STEPS = (0, 3, 6, 9)


@dataclass(frozen=True)
class Derived:
    """A default that depends on where and as whom qfarm runs (QFARM_HOME,
    the login name): computed as it is read, as text the variable's own
    parser reads, so a derived default is checked like a value that was set."""

    compute: Callable[[], str]


@dataclass(frozen=True)
class Var(Generic[T]):
    """One QFARM_* variable. `parse` turns its text into the value or raises
    ValueError with the rest of a sentence that begins with the name ("must
    be a whole number, not 'x'"); a blank value counts as unset."""

    name: str
    # The Settings field that holds it.
    field: str
    parse: Callable[[str], T]
    default: T | Derived
    help: str
    # Shown masked by `qfarm config` (a URL's user:password part, any
    # secret-looking text): api_client/redaction.py's `redact`.
    secret: bool = False

    def read(self) -> tuple[T, str]:
        """The value and where it came from: "environment" or "default"."""
        raw = os.environ.get(self.name, "")
        if raw.strip():
            return self._parse(raw), "environment"
        if isinstance(self.default, Derived):
            return self._parse(self.default.compute()), "default"
        return self.default, "default"

    def _parse(self, raw: str) -> T:
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise QFarmError(f"{self.name} {exc}") from None


# -- how a value's text is read ------------------------------------------------


def _text(raw: str) -> str:
    return raw


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _whole(low: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be a whole number, not {raw!r}") from None
        if value < low:
            raise ValueError(f"must be at least {low}, not {value}")
        return value

    return parse


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(raw: str) -> bool:
    word = raw.strip().lower()
    if word not in _ON + _OFF:
        raise ValueError(f"must be 1 or 0 (true/false, yes/no, on/off), not {raw!r}")
    return word in _ON


def _any_but_off(raw: str) -> bool:
    # QFARM_DEBUG is read by the CLI's last-resort error handler, which must
    # not fail on it: any value but an "off" word turns it on.
    return raw.strip().lower() not in _OFF


def _user(raw: str) -> str:
    if len(raw) > 128 or not raw.isprintable() or not raw.strip() or any(c.isspace() for c in raw):
        raise ValueError(f"must be 1 to 128 printable characters without spaces, not {printable(raw[:40])!r}"
                         f"{'…' if len(raw) > 40 else ''}")
    return raw


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a container's uid without a passwd entry
        raise QFarmError("QFARM_USER is unset and this process has no login name: set QFARM_USER") from None


def _prefixes(raw: str) -> tuple[str, ...]:
    prefixes = tuple(p.strip() for p in raw.split(",") if p.strip())
    bad = [p for p in prefixes if not p.startswith("s3://") or len(p) <= len("s3://")]
    if bad:
        raise ValueError(f"holds {bad[0]!r}: give s3:// prefixes, comma-separated")
    return prefixes


def _names(raw: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def _gpu_index(raw: str) -> int | Literal["cpu"]:
    if raw.strip() == "cpu":
        return "cpu"
    if not raw.strip().isdigit():
        raise ValueError(f"must be a GPU index or cpu, not {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class JobMemory:
    """QFARM_JOB_MEMORY_LIMIT as set: a share of the host's memory or a size
    (worker/job_process.py turns a share into bytes on the host it runs on)."""

    text: str
    share: float | None = None
    bytes: int | None = None


def _job_memory(raw: str) -> JobMemory | None:
    text = raw.strip()
    if text.lower() in ("off", "none", "0"):
        return None
    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            share = 0
        if not 0 < share <= 1:
            raise ValueError(f"must be a share of memory (1% to 100%) or a size, not {text!r}")
        return JobMemory(text, share=share)
    try:
        size = parse_size(text)
    except SpecError:
        size = None
    if not size:
        raise ValueError(f"must be a share of memory (80%) or a size (24GiB), not {text!r}")
    return JobMemory(text, bytes=size)


def _home() -> str:
    return str(Path.home() / ".qfarm")


def _under_home(*parts: str, uri: bool = False) -> Callable[[], str]:
    def compute() -> str:
        path = qfarm_home().joinpath(*parts)
        return path.as_uri() if uri else str(path)

    return compute


# -- the declarations ------------------------------------------------------------

# A calibration or evaluation text is read whole (by the client at submit,
# by the worker): bounded, so a mistaken 2 GiB file is refused in one line.
DEFAULT_MAX_TEXT_BYTES = 256 * 2**20

HOME: Var[Path] = Var("QFARM_HOME", "home", _path, Derived(_home), "where the defaults live")
BROKER_URL: Var[str] = Var("QFARM_BROKER_URL", "broker_url", _text, "redis://127.0.0.1:6379/0", "Celery broker", secret=True)
DATABASE_URL: Var[str] = Var(
    "QFARM_DATABASE_URL", "database_url", _text,
    Derived(lambda: f"sqlite:///{qfarm_home() / 'qfarm.db'}"),
    "SQLAlchemy URL (postgresql://… for a farm)", secret=True)
STORAGE_URL: Var[str] = Var("QFARM_STORAGE_URL", "storage_url", _text,
                            Derived(_under_home("artifacts", uri=True)),
                            "where artifacts go: s3://bucket/prefix or file:///dir", secret=True)
S3_ENDPOINT_URL: Var[str | None] = Var("QFARM_S3_ENDPOINT_URL", "s3_endpoint_url", _text, None,
                                       "MinIO, R2, Ceph… endpoint (unset: AWS)")
S3_PART_SIZE: Var[int] = Var("QFARM_S3_PART_SIZE", "s3_part_size", _whole(1), 64 * 2**20,
                             "multipart part size in bytes (at least 5 MiB is used)")
SCRATCH_DIR: Var[Path] = Var("QFARM_SCRATCH_DIR", "scratch_dir", _path, Derived(_under_home("scratch")),
                             "a worker's working files (removed after each job)")
USER: Var[str] = Var("QFARM_USER", "user", _user, Derived(_login_name),
                     "with SQLite, recorded as submitted_by; with PostgreSQL the database role is the user")
JOB_TIME_LIMIT: Var[int] = Var("QFARM_JOB_TIME_LIMIT", "job_time_limit_s", _whole(1), 12 * 3600,
                               "seconds a job may run; the broker's visibility timeout is derived from it")
MAX_ATTEMPTS: Var[int] = Var("QFARM_MAX_ATTEMPTS", "max_attempts", _whole(1), 3,
                             "runs a job may start before it is failed")
HEARTBEAT_TIMEOUT: Var[int] = Var("QFARM_HEARTBEAT_TIMEOUT", "heartbeat_timeout_s", _whole(2), 120,
                                  "seconds a worker and its job may both be silent before the job is taken back")
DB_RETRY_S: Var[int] = Var("QFARM_DB_RETRY_S", "db_retry_s", _whole(0), 300,
                           "seconds a worker retries an unreachable database before giving the message back")
MAX_TEXT_BYTES: Var[int] = Var("QFARM_MAX_TEXT_BYTES", "max_text_bytes", _whole(1), DEFAULT_MAX_TEXT_BYTES,
                               "the largest calibration or evaluation text, in bytes")
INPUT_PREFIXES: Var[tuple[str, ...] | None] = Var(
    "QFARM_INPUT_PREFIXES", "input_prefixes", _prefixes, None,
    "s3:// prefixes, comma-separated, workers read models from (unset on a worker: no s3:// model)")
MODEL_CACHE_DIR: Var[Path] = Var("QFARM_MODEL_CACHE_DIR", "model_cache_dir", _path,
                                 Derived(_under_home("model-cache")),
                                 "where a worker keeps the models it fetched")
MODEL_CACHE_BYTES: Var[int] = Var("QFARM_MODEL_CACHE_BYTES", "model_cache_bytes", _whole(0), 100 * 2**30,
                                  "bound of a host's model cache in bytes (0: off)")
JOB_MEMORY_LIMIT: Var[JobMemory | None] = Var(
    "QFARM_JOB_MEMORY_LIMIT", "job_memory_limit", _job_memory, JobMemory("80%", share=0.8),
    "memory a job process may hold: a share of the host's (80%), a size (24GiB) or off")
PRELOAD: Var[bool] = Var("QFARM_PRELOAD", "preload", _flag, True,
                         "0: a worker does not import torch and the engines once in its parent process")
DEBUG: Var[bool] = Var("QFARM_DEBUG", "debug", _any_but_off, False,
                       "1: an unexpected error prints its traceback instead of one line")
HF_TOKEN_FILE: Var[Path | None] = Var("QFARM_HF_TOKEN_FILE", "hf_token_file", _path, None,
                                      "a file holding the hub token qfarm publish uses (else HF_TOKEN); never shown")
# Set by `qfarm worker start` for each worker it starts (worker/launcher.py).
GPU_INDEX: Var[int | Literal["cpu"] | None] = Var("QFARM_GPU_INDEX", "gpu_index", _gpu_index, None,
                                                  "the GPU a worker is pinned to, or cpu (set by qfarm worker start)")
GPU_NAME: Var[str | None] = Var("QFARM_GPU_NAME", "gpu_name", _text, None,
                                "that GPU's name, known without touching CUDA (set by qfarm worker start)")
CPU_THREADS: Var[int | None] = Var("QFARM_CPU_THREADS", "cpu_threads", _whole(1), None,
                                   "a CPU worker's share of the host's cores (set by qfarm worker start)")
ALLOW_REMOTE_CODE: Var[bool] = Var("QFARM_ALLOW_REMOTE_CODE", "allow_remote_code", _flag, False,
                                   "whether the worker takes jobs that run a model's own code "
                                   "(set by qfarm worker start --allow-remote-code)")
QUEUES: Var[tuple[str, ...]] = Var("QFARM_QUEUES", "queues", _names, (),
                                   "the queues a worker serves, shown in qfarm workers (set by qfarm worker start)")
WORKER_NAME: Var[str] = Var("QFARM_WORKER_NAME", "worker_name", _text, "worker",
                            "a worker's name where Celery gives none")

VARIABLES: tuple[Var[Any], ...] = (
    HOME, BROKER_URL, DATABASE_URL, STORAGE_URL, S3_ENDPOINT_URL, S3_PART_SIZE, SCRATCH_DIR, USER,
    JOB_TIME_LIMIT, MAX_ATTEMPTS, HEARTBEAT_TIMEOUT, DB_RETRY_S, MAX_TEXT_BYTES, INPUT_PREFIXES,
    MODEL_CACHE_DIR, MODEL_CACHE_BYTES, JOB_MEMORY_LIMIT, PRELOAD, DEBUG, HF_TOKEN_FILE,
    GPU_INDEX, GPU_NAME, CPU_THREADS, ALLOW_REMOTE_CODE, QUEUES, WORKER_NAME,
)


# -- single values, read alone ---------------------------------------------------
# For callers that need one setting where another being malformed must not
# stop them (the paths of the defaults, the CLI's error handler), and for the
# texts' bound, which the client checks without a whole Settings.


def qfarm_home() -> Path:
    return HOME.read()[0]


def max_text_bytes() -> int:
    """QFARM_MAX_TEXT_BYTES: the largest calibration or evaluation text."""
    return MAX_TEXT_BYTES.read()[0]


def input_prefixes() -> list[str] | None:
    """QFARM_INPUT_PREFIXES: the `s3://` prefixes workers may read models
    from with the farm's credentials, comma-separated (None: unset)."""
    prefixes = INPUT_PREFIXES.read()[0]
    return None if prefixes is None else list(prefixes)


def debug() -> bool:
    """QFARM_DEBUG: whether an unexpected error shows its traceback."""
    return DEBUG.read()[0]


# -- all of them -------------------------------------------------------------------


@dataclass(frozen=True)
class Effective:
    """A variable as it is now: its value and where it came from."""

    var: Var[Any]
    value: Any
    source: str

    def shown(self) -> str:
        """The value as `qfarm config` prints it: as it would be written in
        the environment, secrets masked."""
        value = self.value
        if value is None:
            text = "unset"
        elif isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, tuple):
            text = ",".join(value) or "unset"
        elif isinstance(value, JobMemory):
            text = value.text
        else:
            text = str(value)
        # Every value goes through the redaction, not only the secret ones: a
        # path or an endpoint may carry a password just as well.
        return printable(redact(text))

    def json_value(self) -> Any:
        """The value for `qfarm config --json`: numbers and flags as such,
        nothing as null, the rest as `shown()` writes it."""
        if self.value is None or isinstance(self.value, (bool, int)):
            return self.value
        return self.shown()


def effective() -> list[Effective]:
    """Every declared variable, read now; the first malformed one raises
    QFarmError in one line."""
    return [Effective(var, *var.read()) for var in VARIABLES]


@dataclass(frozen=True)
class Settings:
    """Every QFARM_* variable as a typed field (the declarations above say
    what each means); `from_env()` reads them all."""

    home: Path
    broker_url: str
    database_url: str
    storage_url: str
    s3_endpoint_url: str | None
    s3_part_size: int
    scratch_dir: Path
    user: str
    # A job that runs longer than this is stopped and marked failed; the
    # broker's visibility timeout is derived from it (celery_config.py).
    job_time_limit_s: int
    # How many times a job is started before it is failed: a worker that
    # dies under it (OOM kill, lost node) or stops (systemctl restart) hands
    # it to the next worker as a new attempt.
    max_attempts: int
    # A running job whose worker has written no heartbeat for this long, and
    # whose job process has not advanced for as long (api_client/infra/liveness.py),
    # is taken back by any live worker (requeued, or failed as "worker lost").
    heartbeat_timeout_s: int
    # How long a worker retries a database it cannot reach before it gives
    # the job's message back to the broker (never acknowledging it unwritten).
    db_retry_s: int
    max_text_bytes: int
    input_prefixes: tuple[str, ...] | None
    # Where a worker keeps the models it fetched (worker/model_cache.py), and
    # how much it may hold there.
    model_cache_dir: Path
    model_cache_bytes: int
    job_memory_limit: JobMemory | None
    preload: bool
    debug: bool
    hf_token_file: Path | None
    # What `qfarm worker start` tells each worker it starts.
    gpu_index: int | Literal["cpu"] | None
    gpu_name: str | None
    cpu_threads: int | None
    allow_remote_code: bool
    queues: tuple[str, ...]
    worker_name: str

    @property
    def heartbeat_interval_s(self) -> float:
        """A worker writes its heartbeat (and reconciles) this often: a
        fraction of the timeout, so one late beat never looks like a death."""
        return max(0.5, min(10.0, self.heartbeat_timeout_s / 6))

    @classmethod
    def from_env(cls) -> Settings:
        return cls(**{e.var.field: e.value for e in effective()})


def _check_declarations() -> None:
    # A declaration without its field (or a field without its declaration)
    # would only show when from_env() is first called: say so at import.
    declared, typed = [v.field for v in VARIABLES], [f.name for f in fields(Settings)]
    if sorted(declared) != sorted(typed) or len({v.name for v in VARIABLES}) != len(VARIABLES):
        raise AssertionError(f"config.VARIABLES and Settings disagree: {sorted(set(declared) ^ set(typed))}")


_check_declarations()
