"""Device leases as database rows: at most one holder per device at any time, across processes and hosts.

``acquire`` is one conditional upsert (``INSERT ... ON CONFLICT (device_id) DO UPDATE ... WHERE
expires_utc < now RETURNING``): it inserts a lease that is absent, or takes over one that has
expired, and two processes can never both win. Every lease won appends a ``lease_history`` row in
the same transaction; a release, or a takeover of an expired lease, closes it. Times are UTC epoch
float seconds from ``clock`` (``time.time`` unless a test passes its own).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable, Iterable, Optional

from sqlalchemy import and_, delete, select, update

from edgeprobe.farm.db.engine import Database
from edgeprobe.farm.db.models import DeviceLease, LeaseHistory

Clock = Callable[[], float]


def insert_for(db: Database, table):
    """The dialect's INSERT with ON CONFLICT support (SQLite or PostgreSQL)."""
    if db.dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def acquire(db: Database, device_id: str, holder: str, ttl_s: float, *, clock: Clock = time.time) -> bool:
    """Take the device's lease for ``ttl_s`` seconds if nobody holds it or its lease has expired."""
    now = clock()
    t = DeviceLease.__table__
    ins = insert_for(db, t).values(device_id=device_id, holder=holder, expires_utc=now + ttl_s, acquired_utc=now)
    stmt = ins.on_conflict_do_update(
        index_elements=[t.c.device_id],
        set_={"holder": ins.excluded.holder, "expires_utc": ins.excluded.expires_utc,
              "acquired_utc": ins.excluded.acquired_utc},
        where=t.c.expires_utc < now,
    ).returning(t.c.holder)
    with db.session() as s:
        if s.execute(stmt).first() is None:
            return False
        # We hold the row's lock (PostgreSQL) or the write lock (SQLite) until commit: close the
        # lease this one took over (it ended when it expired) and record ours, stamped now that we hold it.
        s.execute(update(LeaseHistory)
                  .where(and_(LeaseHistory.device_id == device_id, LeaseHistory.released_utc.is_(None)))
                  .values(released_utc=LeaseHistory.expires_utc))
        won_at = max(now, clock())
        s.add(LeaseHistory(device_id=device_id, holder=holder, acquired_utc=won_at, expires_utc=now + ttl_s))
    return True


def heartbeat(db: Database, device_id: str, holder: str, ttl_s: float, *, clock: Clock = time.time) -> bool:
    """Extend the lease to now + ``ttl_s`` if ``holder`` still holds it (and it has not expired)."""
    now = clock()
    with db.session() as s:
        row = s.execute(update(DeviceLease)
                        .where(and_(DeviceLease.device_id == device_id, DeviceLease.holder == holder,
                                    DeviceLease.expires_utc >= now))
                        .values(expires_utc=now + ttl_s).returning(DeviceLease.device_id)).first()
        if row is None:
            return False
        s.execute(update(LeaseHistory)
                  .where(and_(LeaseHistory.device_id == device_id, LeaseHistory.holder == holder,
                              LeaseHistory.released_utc.is_(None)))
                  .values(expires_utc=now + ttl_s))
    return True


def release(db: Database, device_id: str, holder: str, *, clock: Clock = time.time) -> bool:
    """Give the lease back if ``holder`` holds it; False if it was not (or no longer) theirs."""
    now = clock()
    with db.session() as s:
        row = s.execute(delete(DeviceLease)
                        .where(and_(DeviceLease.device_id == device_id, DeviceLease.holder == holder))
                        .returning(DeviceLease.expires_utc)).first()
        if row is None:
            return False
        s.execute(update(LeaseHistory)
                  .where(and_(LeaseHistory.device_id == device_id, LeaseHistory.holder == holder,
                              LeaseHistory.released_utc.is_(None)))
                  .values(released_utc=min(now, row.expires_utc)))
    return True


def holder_name(nonce: str, device_id: str) -> str:
    """A lease holder of this process: ``HOST:PID:NONCE:DEVICE`` (read back by :func:`holder_is_dead`)."""
    return f"{socket.gethostname()}:{os.getpid()}:{nonce}:{device_id}"


def holder_is_dead(holder: str) -> bool:
    """Whether ``holder`` names a process of this host that no longer exists (killed, crashed): its
    leases need not run out before a resumed farm takes them. A holder on another host, or a live
    (or unreadable) PID, is never called dead, so a reused PID only makes us wait for the expiry."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, as another user's process
        return False
    return False


def clear_dead(db: Database, device_id: str, *, clock: Clock = time.time) -> bool:
    """Drop the device's lease if its holder is a dead process of this host (its history row ends now)."""
    holder = holder_of(db, device_id, clock=lambda: float("-inf"))  # expired or not
    if holder is None or not holder_is_dead(holder):
        return False
    return release(db, device_id, holder, clock=clock)


def release_all(db: Database, holders: Iterable[str], *, clock: Clock = time.time) -> int:
    """Release every lease held by ``holders`` (a hard stop); returns how many were held."""
    with db.session() as s:
        rows = s.execute(select(DeviceLease.device_id, DeviceLease.holder)
                         .where(DeviceLease.holder.in_(list(holders)))).all()
    return sum(release(db, r.device_id, r.holder, clock=clock) for r in rows)


def holder_of(db: Database, device_id: str, *, clock: Clock = time.time) -> Optional[str]:
    """Who holds the device's live lease now, or None (no lease, or it has expired)."""
    with db.reader() as s:
        row = s.execute(select(DeviceLease.holder, DeviceLease.expires_utc)
                        .where(DeviceLease.device_id == device_id)).first()
    return row.holder if row is not None and row.expires_utc >= clock() else None


def history(db: Database, device_id: Optional[str] = None) -> list[dict]:
    """Every lease won, oldest first: device_id, holder, acquired_utc, expires_utc, released_utc."""
    q = select(LeaseHistory).order_by(LeaseHistory.device_id, LeaseHistory.acquired_utc, LeaseHistory.id)
    if device_id is not None:
        q = q.where(LeaseHistory.device_id == device_id)
    with db.reader() as s:
        return [{"device_id": h.device_id, "holder": h.holder, "acquired_utc": h.acquired_utc,
                 "expires_utc": h.expires_utc, "released_utc": h.released_utc} for h in s.scalars(q)]
