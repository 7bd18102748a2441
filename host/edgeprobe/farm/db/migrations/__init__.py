"""Alembic migrations of the farm database, shipped in the package (run by ``engine.open_db``)."""
