"""The machine's Redis and PostgreSQL, shared by every test process.

Each pytest process (one per xdist worker) gets a Redis database of its own,
QFARM_TEST_REDIS_DB plus the worker's number, and PostgreSQL databases it
creates and drops, so parallel workers never see each other's keys or rows.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit

from tests.support.ports import port_open
from tests.support.secrets import scan_pg

PG_ADMIN_URL = os.environ.get("QFARM_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_SERVER_URL = os.environ.get("QFARM_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
REDIS_DB_BASE = int(os.environ.get("QFARM_TEST_REDIS_DB", "11"))


class ServiceMissing(RuntimeError):
    """A service the test needs is not running (scripts/services.sh starts them)."""


def worker_number() -> int:
    """0 for a plain run; N for pytest-xdist's worker gwN."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name.removeprefix("gw") or 0)


def _require(url: str, what: str) -> None:
    parts = urlsplit(url)
    if not port_open(parts.hostname or "127.0.0.1", parts.port or 0):
        raise ServiceMissing(f"{what} is not running at {parts.hostname}:{parts.port} (scripts/services.sh starts it)")


def redis_url() -> str:
    """This process's Redis database, emptied."""
    import redis

    _require(REDIS_SERVER_URL, "Redis")
    db = REDIS_DB_BASE + worker_number()
    server = redis.Redis.from_url(REDIS_SERVER_URL)
    try:
        have = int(server.config_get("databases")["databases"])
    except redis.ResponseError:  # CONFIG disabled: SELECT says it instead
        have = db + 1
    finally:
        server.close()
    if db >= have:
        raise ServiceMissing(f"Redis has databases 0-{have - 1}, and this test process needs {db}: "
                             f"set QFARM_TEST_REDIS_DB lower or run fewer workers (-n)")
    url = f"{REDIS_SERVER_URL}/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


def create_database() -> str:
    """A fresh PostgreSQL database; its URL."""
    import psycopg

    _require(PG_ADMIN_URL, "PostgreSQL")
    name = f"qfarm_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def drop_database(url: str) -> None:
    """Drop it, once what the tests wrote there was searched for the planted secrets."""
    import psycopg

    scan_pg(url)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


QFARM_TABLES = "publications, job_events, jobs, job_groups, workers, farm, alembic_version"


def empty_database(url: str) -> None:
    """Drop qfarm's tables, so the next test migrates from nothing (once
    what the tests before wrote was searched for the planted secrets)."""
    from sqlalchemy import create_engine, text

    scan_pg(url)
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {QFARM_TABLES} CASCADE"))
    engine.dispose()
