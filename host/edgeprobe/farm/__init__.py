"""The device farm: many devices × models × recipes, measured into one results database.

``inventory`` reads the farm file (devices, labels, token variables, the matrix), ``matrix``
expands it into jobs with stable keys, ``scheduler`` runs them with one ``worker`` per device,
``jobs``/``leases``/``fleet`` are the database's journal, leases and device health. Nothing
imported here loads torch: a farm file is checked, and its jobs listed, before anything is lowered.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from edgeprobe.farm.inventory import FarmFile
    from edgeprobe.farm.scheduler import FarmSummary


def run(farm: Union[str, Path, "FarmFile"], *, db: Optional[str] = None, run_id: Optional[str] = None,
        **options: Any) -> "FarmSummary":
    """Run (or resume) a farm file's matrix into the database at ``db`` (default: $EDGEPROBE_FARM_DB,
    else the SQLite file in the user data dir); ``options`` are ``scheduler.run_farm``'s."""
    from edgeprobe.farm.db.engine import open_db
    from edgeprobe.farm.inventory import FarmFile, load_farm
    from edgeprobe.farm.scheduler import run_farm

    checked = farm if isinstance(farm, FarmFile) else load_farm(farm)
    database = open_db(db)
    try:
        return run_farm(checked, db=database, run_id=run_id, **options)
    finally:
        database.close()


__all__ = ["run"]
