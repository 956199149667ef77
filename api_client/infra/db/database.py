"""The engine and sessions, and the checks run before anything is queued."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

import migrations
from api_client.errors import ServiceUnavailable, first_line

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


def normalize_url(url: str) -> str:
    """`url` as SQLAlchemy must be given it here: a PostgreSQL URL names the
    psycopg 3 driver (the one qfarm installs), as a plain postgresql:// URL
    would make SQLAlchemy look for psycopg2. Public because Alembic's
    environment (migrations/env.py) opens the same URL as the client does."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Database:
    def __init__(self, url: str, pooled: bool = True):
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        kwargs: dict = {"pool_pre_ping": True}
        if not pooled:
            # A connection per use: for a thread in a process that forks
            # (a worker's parent), so no child inherits an open connection.
            kwargs["poolclass"] = NullPool
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # A worker and the CLI write the same file: wait for the lock rather
            # than fail at once.
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["connect_args"] = {"connect_timeout": 5}
        self.engine: Engine = create_engine(self.url, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def display_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def check(self) -> None:
        """Fail with one line unless the database answers and is migrated."""
        try:
            current = self.revision()
        except SQLAlchemyError as exc:
            if getattr(getattr(exc, "orig", None), "sqlstate", None) == "42501":  # insufficient privilege
                role = make_url(self.url).username or "this role"
                raise ServiceUnavailable(f"the database role {role} may not use qfarm's tables at {self.display_url}: "
                                         f"an administrator grants it (GRANT qfarm_user TO {role})") from None
            raise ServiceUnavailable(f"cannot reach the database at {self.display_url}: {first_line(getattr(exc, 'orig', None) or exc)}") from None
        problem = self.schema_problem(current)
        if problem:
            raise ServiceUnavailable(problem)

    def revision(self) -> str | None:
        """The schema revision the database is at (None: no qfarm tables)."""
        with self.engine.connect() as conn:
            return _current_revision(conn)

    def schema_problem(self, current: str | None) -> str | None:
        """Why a database at revision `current` cannot be used by this code
        (one line), or None when it is at this code's schema."""
        head = head_revision()
        if current == head:
            return None
        state = "has no qfarm tables" if current is None else f"is at schema {current}, not {head}"
        return f"the database at {self.display_url} {state}: run `qfarm db upgrade`"

    def upgrade(self) -> str:
        from alembic import command

        command.upgrade(alembic_config(self.url), "head")
        return head_revision()

    def dispose(self) -> None:
        self.engine.dispose()


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached (down, restarting,
    a dropped connection, SQLite's lock held too long): worth retrying."""
    if (isinstance(exc, DBAPIError) and exc.connection_invalidated) or isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    orig = exc.orig
    if type(orig).__module__.startswith("sqlite3"):
        # SQLite says "no such column" with the same class: only a lock or
        # a file it cannot reach is worth waiting for.
        return any(s in str(orig).lower() for s in ("locked", "busy", "unable to open", "disk i/o"))
    return True  # PostgreSQL: refused, closed, shutting down; its schema errors are ProgrammingErrors


class DatabaseGone(ServiceUnavailable):
    """The database stayed unreachable for the whole retry window."""


T = TypeVar("T")


def with_retry(fn: Callable[[], T], retry_s: float, what: str = "the database",
               warn: Callable[[str], None] | None = None) -> T:
    """`fn()`, retried with backoff while the database is unreachable, for up
    to `retry_s` seconds; then DatabaseGone. A worker writes every state
    change through this, so a database outage delays a job, never strands it."""
    deadline = time.monotonic() + retry_s
    delay, warned = 0.5, False
    while True:
        try:
            return fn()
        except Exception as exc:
            if not unreachable(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise DatabaseGone(f"{what} was unreachable for {retry_s:.0f} s: {first_line(getattr(exc, 'orig', None) or exc)}") from None
            if warn is not None and not warned:
                warn(f"{what} is unreachable ({first_line(getattr(exc, 'orig', None) or exc)}); retrying for up to {retry_s:.0f} s")
                warned = True
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the CLI read while a worker writes.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%': escape it so URL-encoded passwords survive.
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None, "migrations/ holds no revision"
    return head


def _current_revision(conn: Any) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    return row[0] if row else None
