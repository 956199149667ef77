"""memory and speed to serve, task recovery, compare groups

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_FIGURES = [
    ("weights_bytes", sa.BigInteger), ("weights_bytes_baseline", sa.BigInteger),
    ("serve_vram_bytes", sa.BigInteger), ("serve_vram_baseline_bytes", sa.BigInteger),
    ("serve_kernel", sa.String(48)), ("serve_tokens_per_s", sa.Float), ("serve_tokens_per_s_baseline", sa.Float),
    ("task_recovery", sa.Float),
]


def upgrade() -> None:
    op.create_table(
        "job_groups",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("methods", sa.JSON, nullable=False),
        sa.Column("limits", sa.JSON, nullable=False),
        sa.Column("submitted_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        for name, kind in _FIGURES:
            batch.add_column(sa.Column(name, kind))
        batch.add_column(sa.Column("group_id", sa.String(32)))
        batch.create_index("ix_jobs_group_id", ["group_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_group_id")
        batch.drop_column("group_id")
        for name, _ in reversed(_FIGURES):
            batch.drop_column(name)
    op.drop_table("job_groups")
