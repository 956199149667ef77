"""jobs and job_events

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(16)),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("calib", sa.JSON),
        sa.Column("eval", sa.JSON, nullable=False),
        sa.Column("max_vram_bytes", sa.BigInteger),
        sa.Column("weights", sa.String(8), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("submitted_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(255)),
        sa.Column("gpu_index", sa.Integer),
        sa.Column("gpu_name", sa.String(128)),
        sa.Column("model_bytes", sa.BigInteger),
        sa.Column("peak_vram_bytes", sa.BigInteger),
        sa.Column("peak_vram_nvml_bytes", sa.BigInteger),
        sa.Column("eval_peak_vram_bytes", sa.BigInteger),
        sa.Column("artifact_bytes", sa.BigInteger),
        sa.Column("quantize_seconds", sa.Float),
        sa.Column("eval_seconds", sa.Float),
        sa.Column("ppl_baseline", sa.Float),
        sa.Column("ppl_quantized", sa.Float),
        sa.Column("ppl_ratio", sa.Float),
        sa.Column("tokens_per_s_baseline", sa.Float),
        sa.Column("tokens_per_s_quantized", sa.Float),
        sa.Column("metrics", sa.JSON),
        sa.Column("library_versions", sa.JSON),
        sa.Column("artifact_uri", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("error_traceback", sa.Text),
    )
    op.create_index("ix_jobs_state_created", "jobs", ["state", "created_at"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(16)),
        sa.Column("message", sa.Text),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_events_job_id", table_name="job_events")
    op.drop_table("job_events")
    op.drop_index("ix_jobs_state_created", table_name="jobs")
    op.drop_table("jobs")
