"""time estimates, peak resident memory, priorities, a worker's free GPU memory

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("estimates", sa.JSON))
        batch.add_column(sa.Column("priority", sa.String(8), nullable=False, server_default="normal"))
        batch.add_column(sa.Column("peak_rss_bytes", sa.BigInteger))
        batch.add_column(sa.Column("eval_peak_rss_bytes", sa.BigInteger))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("gpu_free_bytes", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("gpu_free_bytes")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("eval_peak_rss_bytes")
        batch.drop_column("peak_rss_bytes")
        batch.drop_column("estimates")
        batch.drop_column("priority")
