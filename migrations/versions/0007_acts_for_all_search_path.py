"""PostgreSQL: qfarm_acts_for_all() reads the catalogue and `jobs` by schema

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

The function row-level security asks (migration 0006) ran with the caller's
search path, in which a session's temporary tables come first, before even
pg_catalog: any user could `CREATE TEMP TABLE pg_roles (rolname name,
rolsuper bool, rolbypassrls bool)`, put a row for itself in it, and pass
every policy (cancel, requeue, rewrite any user's job). Now every relation
it reads is named with its schema, and it runs with `search_path =
pg_catalog, <the farm's schema>, pg_temp` (temporary schema last, as
PostgreSQL's manual advises for functions that decide rights).
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def acts_for_all(schema: str) -> str:
    """The function's definition; `schema` as quote_ident gives it."""
    jobs = f"{schema}.jobs".replace("'", "''")
    return f"""
CREATE OR REPLACE FUNCTION qfarm_acts_for_all() RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog, {schema}, pg_temp AS $$
  SELECT pg_catalog.pg_has_role(current_user, 'qfarm_admin', 'MEMBER')
      OR pg_catalog.pg_has_role(current_user, 'qfarm_worker', 'MEMBER')
      OR pg_catalog.pg_has_role(current_user, (SELECT c.relowner FROM pg_catalog.pg_class c
                                               WHERE c.oid = '{jobs}'::pg_catalog.regclass), 'MEMBER')
      OR (SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
$$
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    # The schema the tables were made in (Alembic makes them in the current one).
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(acts_for_all(schema))


def downgrade() -> None:
    # 0006's definition is the hole this closes: the pinned one answers the
    # same for every role that did not plant a table, so it stays.
    pass
