"""uncertainty of the accuracy figures, KL divergence, serve speed as a server runs it

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_FIGURES = [
    ("serve_method", sa.String(32)), ("serve_batch_tokens_per_s", sa.Float),
    ("serve_batch_tokens_per_s_baseline", sa.Float), ("serve_prefill_tokens_per_s", sa.Float),
    ("serve_prefill_tokens_per_s_baseline", sa.Float), ("task_recovery_stderr", sa.Float),
    ("ppl_ratio_low", sa.Float), ("ppl_ratio_high", sa.Float), ("kl_divergence", sa.Float),
    ("kl_divergence_p99", sa.Float),
]


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, kind in _FIGURES:
            batch.add_column(sa.Column(name, kind))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, _ in reversed(_FIGURES):
            batch.drop_column(name)
