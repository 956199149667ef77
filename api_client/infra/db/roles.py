"""Who a client is, and whether it may act on other users' jobs.

On PostgreSQL the answer is the database's: the user is the role the client
connected as (`current_user`), whatever QFARM_USER says, and the right to
cancel or requeue another user's job is membership in `qfarm_admin` (or
being a worker, the tables' owner or a superuser): migration 0006 makes the
roles and the row-level security that enforces the same rule on every
write. On SQLite (one machine) there are no roles: the user is QFARM_USER,
on the honour system.
"""

from __future__ import annotations

from sqlalchemy import text

from api_client.infra.db.database import Database


def is_postgres(db: Database) -> bool:
    return db.engine.dialect.name == "postgresql"


def current_user(db: Database) -> str | None:
    """The role this connection acts as (None on SQLite)."""
    if not is_postgres(db):
        return None
    with db.engine.connect() as conn:
        return str(conn.execute(text("SELECT current_user")).scalar_one())


def acts_for_all(db: Database) -> bool:
    """Whether this connection's role may act on every user's job (False on
    SQLite, where nothing can say so)."""
    if not is_postgres(db):
        return False
    with db.engine.connect() as conn:
        return bool(conn.execute(text("SELECT qfarm_acts_for_all()")).scalar_one())
