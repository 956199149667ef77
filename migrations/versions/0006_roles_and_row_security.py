"""PostgreSQL: who a client is (its role), and who may act on another's job

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

On PostgreSQL a job's `submitted_by` is the database role that submitted it
(api_client/infra/db/roles.py), and the database itself enforces who may change a
row (row-level security), so a client that skips qfarm's own checks gains
nothing:

- `qfarm_user`: reads everything; submits jobs as itself; cancels and
  requeues its own jobs (and writes their events).
- `qfarm_admin`: a user who may also cancel and requeue every user's job.
- `qfarm_worker`: what workers connect as: runs, records and hands back
  every job, writes worker heartbeats.

Administrators grant them: `CREATE ROLE alice LOGIN PASSWORD '…' IN ROLE
qfarm_user`, `GRANT qfarm_admin TO carol`, `CREATE ROLE gpu1 LOGIN PASSWORD
'…' IN ROLE qfarm_worker`. Roles are the cluster's, shared by every farm
database on it. The tables' owner (the role that runs `qfarm db upgrade`)
and superusers pass row-level security by PostgreSQL's rules: they are
administrators by definition.

SQLite has no roles: one machine, QFARM_USER, the honour system.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ROLES = ("qfarm_user", "qfarm_admin", "qfarm_worker")
# Who may act on every job: one SQL function, read by the policies and by
# the client before it tries (api_client/infra/db/roles.py).
ACTS_FOR_ALL = """
CREATE OR REPLACE FUNCTION qfarm_acts_for_all() RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT pg_has_role(current_user, 'qfarm_admin', 'MEMBER')
      OR pg_has_role(current_user, 'qfarm_worker', 'MEMBER')
      OR pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = 'jobs'::regclass), 'MEMBER')
      OR (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)
$$
"""
OWN_JOB = "submitted_by = current_user OR qfarm_acts_for_all()"
POLICIES = {
    "jobs": [
        ("qfarm_read", "SELECT", "USING (true)"),
        ("qfarm_submit", "INSERT", f"WITH CHECK ({OWN_JOB})"),
        ("qfarm_change", "UPDATE", f"USING ({OWN_JOB}) WITH CHECK ({OWN_JOB})"),
        ("qfarm_remove", "DELETE", f"USING ({OWN_JOB})"),
    ],
    "job_groups": [
        ("qfarm_read", "SELECT", "USING (true)"),
        ("qfarm_submit", "INSERT", f"WITH CHECK ({OWN_JOB})"),
        ("qfarm_remove", "DELETE", f"USING ({OWN_JOB})"),
    ],
    "job_events": [
        ("qfarm_read", "SELECT", "USING (true)"),
        # An event names who wrote it in its message: only on one's own job,
        # or by a role that acts for everyone.
        ("qfarm_write", "INSERT", "WITH CHECK (qfarm_acts_for_all() OR EXISTS "
                                  "(SELECT 1 FROM jobs j WHERE j.id = job_id AND j.submitted_by = current_user))"),
    ],
}
GRANTS = [
    "GRANT SELECT ON jobs, job_events, job_groups, workers, farm, alembic_version TO qfarm_user",
    "GRANT INSERT, UPDATE, DELETE ON jobs, job_groups TO qfarm_user",
    "GRANT INSERT ON job_events TO qfarm_user",
    "GRANT USAGE ON SEQUENCE job_events_id_seq TO qfarm_user",
    "GRANT INSERT, UPDATE, DELETE ON workers TO qfarm_worker",
    "GRANT EXECUTE ON FUNCTION qfarm_acts_for_all() TO PUBLIC",
]


def _tolerant(statement: str) -> str:
    """`statement` run so that another farm's migration doing the same at
    the same moment (the roles are the cluster's) is not an error."""
    return (f"DO $$ BEGIN {statement}; EXCEPTION WHEN duplicate_object OR unique_violation "
            f"OR SQLSTATE 'XX000' THEN NULL; END $$")


def _ensure_roles() -> None:
    """The cluster's roles, admins and workers members of qfarm_user (they
    hold a user's table rights too), made only where missing: a farm's
    administrator owns its database but need not be allowed to create
    roles (PostgreSQL refuses CREATE ROLE and GRANT of a role to such a role
    even when nothing would change), and is then told in one line what a
    superuser runs once."""
    bind = op.get_bind()

    def exists(role: str) -> bool:
        return bind.execute(sa.text("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = :r"), {"r": role}).first() is not None

    have = {role for role in ROLES if exists(role)}
    statements = []
    for role in ROLES:
        if role not in have:
            statements.append(f"CREATE ROLE {role} NOLOGIN" + ("" if role == "qfarm_user" else " IN ROLE qfarm_user"))
        elif role != "qfarm_user" and ("qfarm_user" not in have or not bind.execute(
                sa.text("SELECT pg_catalog.pg_has_role(:r, 'qfarm_user', 'MEMBER')"), {"r": role}).scalar()):
            statements.append(f"GRANT qfarm_user TO {role}")
    if not statements:
        return
    me, may = bind.execute(sa.text("SELECT current_user, rolsuper OR rolcreaterole FROM pg_catalog.pg_roles "
                                   "WHERE rolname = current_user")).one()
    if not may:
        raise RuntimeError(f"qfarm's roles are missing from this PostgreSQL cluster and the role {me} may not create "
                           f"roles: a superuser runs once per cluster: {'; '.join(statements)}")
    for statement in statements:
        op.execute(_tolerant(statement))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _ensure_roles()
    op.execute(ACTS_FOR_ALL)
    for grant in GRANTS:
        op.execute(grant)
    for table, policies in POLICIES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        for name, command, clause in policies:
            op.execute(f"CREATE POLICY {name} ON {table} FOR {command} TO PUBLIC {clause}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, policies in POLICIES.items():
        for name, _, _ in policies:
            op.execute(f"DROP POLICY IF EXISTS {name} ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    # The roles stay: other farm databases of the cluster may use them.
    op.execute("REVOKE ALL ON jobs, job_events, job_groups, workers, farm, alembic_version FROM qfarm_user, qfarm_worker")
    op.execute("REVOKE ALL ON SEQUENCE job_events_id_seq FROM qfarm_user")
    op.execute("DROP FUNCTION IF EXISTS qfarm_acts_for_all()")
