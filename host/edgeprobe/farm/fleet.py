"""The fleet as the farm database knows it: each device's labels, environment block, failure streak,
suspicion and quarantine, kept across runs in the ``devices`` table.

A device with ``quarantine_after`` infrastructure faults in a row is quarantined until now +
``quarantine_s`` with the last fault as its reason. While ``quarantined_until`` lies ahead it gets
no work; once it has passed the device is on *probation*: the next farm run that wants it first
runs a health check (one short measurement) and clears the quarantine only if that passes, else
quarantines it again. ``release`` lifts a quarantine by hand (``edgeprobe farm quarantine
--release DEVICE``). Times are UTC epoch float seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from sqlalchemy import select, update

from edgeprobe.farm.db.engine import Database
from edgeprobe.farm.db.models import Device
from edgeprobe.farm.leases import insert_for

OK, QUARANTINED, PROBATION = "ok", "quarantined", "probation"


@dataclass(frozen=True)
class DeviceHealth:
    """One ``devices`` row, and its quarantine status at ``now``."""

    id: str
    labels: Mapping[str, Any]
    environment: Optional[Mapping[str, Any]]
    consecutive_failures: int
    suspect: bool
    quarantined_until: Optional[float]
    quarantine_reason: Optional[str]
    last_seen_utc: Optional[float]
    status: str  # ok | quarantined | probation


def _health(row: Device, now: float) -> DeviceHealth:
    until = row.quarantined_until
    status = OK if until is None else (QUARANTINED if until > now else PROBATION)
    return DeviceHealth(row.id, dict(row.labels or {}), row.environment, row.consecutive_failures, row.suspect,
                        until, row.quarantine_reason, row.last_seen_utc, status)


def register(db: Database, devices: Iterable[Any]) -> None:
    """Add the devices (``DeviceEntry``-likes: ``id``, ``labels``) not yet known; update the labels
    of those that are (the farm file is the truth for labels; health is kept)."""
    rows = [{"id": d.id, "labels": dict(d.labels), "consecutive_failures": 0, "suspect": False} for d in devices]
    if not rows:
        return
    ins = insert_for(db, Device.__table__).values(rows)
    with db.session() as s:
        s.execute(ins.on_conflict_do_update(index_elements=["id"], set_={"labels": ins.excluded.labels}))


def health(db: Database, device_id: str, *, now: Optional[float] = None) -> Optional[DeviceHealth]:
    """The device's row and status; None if the database has never seen it."""
    with db.reader() as s:
        row = s.get(Device, device_id)
        return _health(row, now or time.time()) if row is not None else None


def all_devices(db: Database, *, now: Optional[float] = None) -> list[DeviceHealth]:
    """Every device the database knows, by id."""
    now = now or time.time()
    with db.reader() as s:
        return [_health(r, now) for r in s.scalars(select(Device).order_by(Device.id))]


def success_values(environment: Optional[Mapping[str, Any]] = None, *, now: Optional[float] = None) -> dict[str, Any]:
    """The ``devices`` row's new values after a job measured there: its failure streak and
    suspicion end, its environment block (from the record) is kept. For ``jobs.finish``'s
    ``device_update``, so that they are written with the result in one transaction."""
    values: dict[str, Any] = {"consecutive_failures": 0, "suspect": False, "last_seen_utc": now or time.time()}
    if environment is not None:
        values["environment"] = dict(environment)
    return values


def record_success(db: Database, device_id: str, environment: Optional[Mapping[str, Any]] = None, *,
                   now: Optional[float] = None) -> None:
    """A job measured on the device, recorded on its own (see :func:`success_values`)."""
    with db.session() as s:
        s.execute(update(Device).where(Device.id == device_id).values(**success_values(environment, now=now)))


def record_fault(db: Database, device_id: str, *, infrastructure: bool, lost: bool = False) -> int:
    """A job failed on the device: an infrastructure fault extends its failure streak, a lost
    connection makes it suspect. Returns the streak (faults that are not the device's leave it)."""
    with db.session() as s:
        row = s.get(Device, device_id, with_for_update=db.dialect == "postgresql")
        if row is None:
            return 0
        if infrastructure:
            row.consecutive_failures += 1
        if lost:
            row.suspect = True
        return row.consecutive_failures


def quarantine(db: Database, device_id: str, *, quarantine_s: float, reason: str,
               now: Optional[float] = None) -> float:
    """Take the device out of work until now + ``quarantine_s``; returns that time."""
    until = (now or time.time()) + quarantine_s
    with db.session() as s:
        s.execute(update(Device).where(Device.id == device_id)
                  .values(quarantined_until=until, quarantine_reason=reason))
    return until


def pass_probation(db: Database, device_id: str) -> None:
    """The health check passed: the quarantine is over and the failure streak starts again."""
    with db.session() as s:
        s.execute(update(Device).where(Device.id == device_id)
                  .values(quarantined_until=None, quarantine_reason=None, consecutive_failures=0, suspect=False))


def release(db: Database, device_id: str) -> bool:
    """Lift a quarantine by hand (no health check: whoever releases it vouches for it). False if
    the device was not quarantined (or is unknown)."""
    with db.session() as s:
        row = s.get(Device, device_id)
        if row is None or row.quarantined_until is None:
            return False
        row.quarantined_until, row.quarantine_reason, row.consecutive_failures = None, None, 0
        return True
