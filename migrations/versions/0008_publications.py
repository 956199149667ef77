"""publications: a job's artifact published to a model hub (qfarm publish)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "publications",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("repo", sa.String(200), nullable=False),
        sa.Column("revision", sa.String(64), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("published_by", sa.String(128), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_publications_job_id", "publications", ["job_id"])
    if op.get_bind().dialect.name == "postgresql":
        # As migration 0006 grants the other tables: everyone reads; a user
        # records a publication under its own role only.
        op.execute("GRANT SELECT, INSERT ON publications TO qfarm_user")
        op.execute("GRANT USAGE ON SEQUENCE publications_id_seq TO qfarm_user")
        op.execute("ALTER TABLE publications ENABLE ROW LEVEL SECURITY")
        op.execute("CREATE POLICY qfarm_read ON publications FOR SELECT TO PUBLIC USING (true)")
        op.execute("CREATE POLICY qfarm_publish ON publications FOR INSERT TO PUBLIC "
                    "WITH CHECK (published_by = current_user OR qfarm_acts_for_all())")


def downgrade() -> None:
    op.drop_index("ix_publications_job_id", table_name="publications")
    op.drop_table("publications")
