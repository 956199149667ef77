"""a running attempt's job process and its progress (liveness)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("process", sa.String(96)))
        batch.add_column(sa.Column("progress_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("progress_cpu_s", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("progress_cpu_s")
        batch.drop_column("progress_at")
        batch.drop_column("process")
