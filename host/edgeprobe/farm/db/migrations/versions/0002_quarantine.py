"""Quarantine with a reason, and when a device was last seen: two columns on ``devices``.

A database made by 0001 is upgraded in place (``open_db`` runs ``upgrade head``); rows keep their
values and get NULL for the new columns.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as b:  # batch: SQLite cannot ALTER most things in place
        b.add_column(sa.Column("quarantine_reason", sa.Text, nullable=True))
        b.add_column(sa.Column("last_seen_utc", sa.Double, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as b:
        b.drop_column("last_seen_utc")
        b.drop_column("quarantine_reason")
