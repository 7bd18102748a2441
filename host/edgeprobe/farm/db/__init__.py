"""The farm's results database: typed tables (``models``), opening and migrating it (``engine``), Alembic ``migrations``."""

from edgeprobe.farm.db.engine import Database, FarmDatabaseError, open_db  # noqa: F401 - the package's API
