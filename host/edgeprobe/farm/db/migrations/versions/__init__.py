"""The farm database's schema revisions, oldest first (Alembic skips this file)."""
