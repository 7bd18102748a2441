"""The farm database's first schema: runs, devices, artifacts, jobs, results, device leases and their history."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("farm_file", sa.Text, nullable=False),
        sa.Column("created_utc", sa.Double, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("summary", sa.JSON, nullable=True),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("labels", sa.JSON, nullable=True),
        sa.Column("environment", sa.JSON, nullable=True),
        sa.Column("quarantined_until", sa.Double, nullable=True),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
        sa.Column("suspect", sa.Boolean, nullable=False),
    )
    op.create_table(
        "artifacts",
        sa.Column("cache_key", sa.Text, primary_key=True),
        *(sa.Column(c, sa.Text, nullable=False) for c in ("model", "recipe", "backend", "format")),
        sa.Column("artifact_sha256", sa.Text, nullable=True),
        sa.Column("manifest", sa.JSON, nullable=True),
    )
    op.create_table(
        "jobs",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("run_id", sa.Text, sa.ForeignKey("runs.id"), nullable=False),
        *(sa.Column(c, sa.Text, nullable=False) for c in ("model", "recipe", "backend", "format", "device_id")),
        sa.Column("launch", sa.Integer, nullable=False),
        sa.Column("settings", sa.JSON, nullable=True),
        sa.Column("artifact_key", sa.Text, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        *(sa.Column(c, sa.Text, nullable=True) for c in ("fault_class", "error", "lease_holder")),
        sa.Column("lease_expires_utc", sa.Double, nullable=True),
        sa.Column("created_utc", sa.Double, nullable=False),
        sa.Column("started_utc", sa.Double, nullable=True),
        sa.Column("finished_utc", sa.Double, nullable=True),
    )
    op.create_index("ix_jobs_run_device_state", "jobs", ["run_id", "device_id", "state"])
    op.create_index("ix_jobs_run_state", "jobs", ["run_id", "state"])
    op.create_table(
        "results",
        sa.Column("job_key", sa.Text, sa.ForeignKey("jobs.key"), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("record_json", sa.Text, nullable=False),
        *(sa.Column(c, sa.Double, nullable=True) for c in ("p50_ms", "p90_ms", "mean_ms")),
        sa.Column("peak_rss_delta_bytes", sa.BigInteger, nullable=True),
        *(sa.Column(c, sa.Text, nullable=True) for c in ("artifact_sha256", "runner_version")),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("created_utc", sa.Double, nullable=False),
    )
    op.create_table(
        "device_leases",
        sa.Column("device_id", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("expires_utc", sa.Double, nullable=False),
        sa.Column("acquired_utc", sa.Double, nullable=False),
    )
    op.create_table(
        "lease_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("acquired_utc", sa.Double, nullable=False),
        sa.Column("expires_utc", sa.Double, nullable=False),
        sa.Column("released_utc", sa.Double, nullable=True),
    )
    op.create_index("ix_lease_history_device", "lease_history", ["device_id", "acquired_utc"])


def downgrade() -> None:
    for table in ("lease_history", "device_leases", "results", "jobs", "artifacts", "devices", "runs"):
        op.drop_table(table)
