"""farm identity, worker heartbeats, remote-code opt-in, pending cleanups

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    farm = op.create_table(
        "farm",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    # A random id, made once with the database: queues and messages carry it,
    # so clients and workers of another database never take this farm's jobs.
    op.execute(farm.insert().values(id=uuid.uuid4().hex[:10], created_at=sa.func.current_timestamp()))
    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("gpu_index", sa.Integer),
        sa.Column("gpu_name", sa.String(128)),
        sa.Column("gpu_total_bytes", sa.BigInteger),
        sa.Column("queues", sa.JSON, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("current_job", sa.String(32)),
        sa.Column("jobs_done", sa.Integer, nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True)),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("allow_remote_code", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("cleanup_uri", sa.Text))
    op.create_index("ix_jobs_state_updated", "jobs", ["state", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_state_updated", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cleanup_uri")
        batch.drop_column("allow_remote_code")
    op.drop_table("workers")
    op.drop_table("farm")
