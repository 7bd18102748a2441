"""Alembic environment for the farm database: migrates the connection ``engine.open_db`` passes in."""

from __future__ import annotations

from alembic import context

from edgeprobe.farm.db.models import Base

connection = context.config.attributes["connection"]  # only ever run programmatically, on a live connection
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
