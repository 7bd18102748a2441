"""The job table as the farm's journal: add jobs idempotently, claim one atomically, finish it once.

A job's row is keyed by its stable key, so adding the same matrix again (a rerun, a resume after
kill -9) leaves existing rows untouched and nothing is measured twice. ``claim`` moves one pending
(or lease-expired) job of a device to ``leased`` in one conditional UPDATE; ``finish`` writes the
result row at most once. Times are UTC epoch float seconds.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Iterable, Optional

from sqlalchemy import and_, exists, func, or_, select, update

from edgeprobe.farm.db.engine import Database
from edgeprobe.farm.db.models import Artifact, Device, DeviceLease, Job, Result, Run
from edgeprobe.farm.leases import insert_for

JobRow = Job
_CELL = ("model", "recipe", "backend", "format", "device_id")
FINAL_STATES = ("done", "failed", "pending")  # what finish may set (pending: give it back for a retry)


def add_run(db: Database, run_id: str, farm_file: str, *, now: Optional[float] = None) -> None:
    """Record a run (no-op if it exists)."""
    stmt = insert_for(db, Run.__table__).values(id=run_id, farm_file=farm_file, created_utc=now or time.time(),
                                                state="running")
    with db.session() as s:
        s.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))


def set_run_state(db: Database, run_id: str, state: str, summary: Optional[dict] = None) -> None:
    values: dict[str, Any] = {"state": state}
    if summary is not None:
        values["summary"] = summary
    with db.session() as s:
        s.execute(update(Run).where(Run.id == run_id).values(**values))


def run_state(db: Database, run_id: str) -> Optional[str]:
    """The run's state (running, done, incomplete, interrupted, failed); None if there is no such run."""
    with db.reader() as s:
        return s.execute(select(Run.state).where(Run.id == run_id)).scalar()


def runs(db: Database, limit: int = 20) -> list[dict[str, Any]]:
    """The latest runs, newest first: id, farm_file, created_utc, state, and jobs per state."""
    with db.reader() as s:
        rows = s.execute(select(Run).order_by(Run.created_utc.desc()).limit(limit)).scalars().all()
        per = s.execute(select(Job.run_id, Job.state, func.count()).where(Job.run_id.in_([r.id for r in rows]))
                        .group_by(Job.run_id, Job.state)).all()
    counted: dict[str, dict[str, int]] = {r.id: dict.fromkeys(("pending", "leased", "done", "failed"), 0) for r in rows}
    for run_id, state, n in per:
        counted[run_id][state] = n
    return [{"id": r.id, "farm_file": r.farm_file, "created_utc": r.created_utc, "state": r.state,
             "counts": counted[r.id]} for r in rows]


def add_artifact(db: Database, artifact: Any, group: tuple[str, str, str, str]) -> None:
    """Record a lowered artifact (model, recipe, backend, format) by cache key with its manifest; once."""
    m = artifact.manifest
    manifest = _plain(m) if dataclasses.is_dataclass(m) else None
    stmt = insert_for(db, Artifact.__table__).values(
        cache_key=m.cache_key, model=group[0], recipe=group[1], backend=group[2], format=group[3],
        artifact_sha256=m.artifact_sha256, manifest=json.loads(json.dumps(manifest, default=str)))
    with db.session() as s:
        s.execute(stmt.on_conflict_do_nothing(index_elements=["cache_key"]))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value) if value is not None else None


def _attr(job: Any, name: str) -> Any:
    """A cell field of a Job-like: on ``job.cell`` or on the job itself (``device_id`` may be ``device``)."""
    for obj in (getattr(job, "cell", None), job):
        for n in (name, name.removesuffix("_id")):
            if obj is not None and hasattr(obj, n):
                return getattr(obj, n)
    raise AttributeError(f"job {getattr(job, 'key', job)!r} has no {name}")


def _job_values(run_id: str, job: Any, now: float) -> dict[str, Any]:
    row = {c: _attr(job, c) for c in _CELL}
    return {"key": job.key, "run_id": run_id, **row, "launch": int(getattr(job, "launch", 0) or 0),
            "settings": _plain(getattr(job, "settings", None)), "artifact_key": getattr(job, "artifact_key", None),
            "state": "pending", "attempts": 0, "created_utc": now}


def add_jobs(db: Database, run_id: str, jobs: Iterable[Any], *, now: Optional[float] = None) -> int:
    """Insert the jobs not yet in the table (by key); existing rows are left as they are. Returns how many were new."""
    now = now or time.time()
    rows = [_job_values(run_id, j, now) for j in jobs]
    if not rows:
        return 0
    t = Job.__table__
    added = 0
    with db.session() as s:
        for i in range(0, len(rows), 500):
            stmt = insert_for(db, t).values(rows[i:i + 500]).on_conflict_do_nothing(index_elements=["key"])
            added += len(s.execute(stmt.returning(t.c.key)).all())
    return added


def _claimable(now: float):
    return or_(Job.state == "pending", and_(Job.state == "leased", Job.lease_expires_utc < now))


def claim(db: Database, run_id: str, device_id: str, holder: str, ttl_s: float, *,
          now: Optional[float] = None, device_lease: bool = False) -> Optional[JobRow]:
    """Lease one pending (or lease-expired) job of this run for this device to ``holder``; None if none
    is left, or if the run is no longer ``running`` (interrupted: nothing new starts), or, with
    ``device_lease``, if ``holder`` no longer holds the device's live lease (one statement: the
    check and the claim cannot be separated by another process taking the device)."""
    now = now or time.time()
    pick = (select(Job.key).where(Job.run_id == run_id, Job.device_id == device_id, _claimable(now))
            .order_by(Job.created_utc, Job.launch, Job.key).limit(1))
    if db.dialect == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    conditions = [exists().where(Run.id == run_id, Run.state == "running")]
    if device_lease:
        conditions.append(exists().where(DeviceLease.device_id == device_id, DeviceLease.holder == holder,
                                         DeviceLease.expires_utc >= now))
    stmt = (update(Job).where(Job.key == pick.scalar_subquery(), _claimable(now), *conditions)
            .values(state="leased", lease_holder=holder, lease_expires_utc=now + ttl_s, attempts=Job.attempts + 1,
                    started_utc=now)
            .returning(Job))
    with db.session() as s:
        return s.execute(stmt).scalars().first()


def extend(db: Database, key: str, holder: str, ttl_s: float, *, now: Optional[float] = None) -> bool:
    """Push a leased job's expiry to now + ``ttl_s`` if ``holder`` still holds it."""
    now = now or time.time()
    with db.session() as s:
        return s.execute(update(Job).where(Job.key == key, Job.state == "leased", Job.lease_holder == holder)
                         .values(lease_expires_utc=now + ttl_s).returning(Job.key)).first() is not None


def result_fields(result: Any) -> dict[str, Any]:
    """``finish``'s keyword arguments from a BenchResult: its JSON and headline numbers."""
    stats = result.stats
    memory = result.run.memory
    runner = result.run.runner
    return {"record_json": result.to_json(), "status": result.run.status,
            "p50_ms": stats.p50_ms if stats else None, "p90_ms": stats.p90_ms if stats else None,
            "mean_ms": stats.mean_ms if stats else None,
            "peak_rss_delta_bytes": memory.peak_rss_delta_bytes if memory else None,
            "artifact_sha256": result.manifest.artifact_sha256, "runner_version": runner.version if runner else None}


def finish(db: Database, key: str, holder: str, *, state: str, fault_class: Optional[str] = None,
           error: Optional[str] = None, record_json: Optional[str] = None, status: str = "ok",
           p50_ms: Optional[float] = None, p90_ms: Optional[float] = None, mean_ms: Optional[float] = None,
           peak_rss_delta_bytes: Optional[int] = None, artifact_sha256: Optional[str] = None,
           runner_version: Optional[str] = None, device_update: Optional[dict[str, Any]] = None,
           now: Optional[float] = None) -> bool:
    """End ``holder``'s lease on the job with ``state`` (done | failed | pending to retry) and, for done
    with a record, store its one result row (a done job keeps the fault of an earlier attempt).
    ``device_update``: values for the job's ``devices`` row, written in the same transaction (the
    worker resets the failure streak of a device that measured: one commit per job, not two). False (a no-op) if the job is not leased to ``holder``:
    finishing a done job again never writes a second result."""
    if state not in FINAL_STATES:
        raise ValueError(f"finish: state must be one of {', '.join(FINAL_STATES)}, not {state!r}")
    now = now or time.time()
    with db.session() as s:
        # a job measured after a failed attempt keeps that attempt's fault class and error: the
        # row says why it took more than one attempt
        faulted = {} if state == "done" and fault_class is None else {"fault_class": fault_class, "error": error}
        row = s.execute(update(Job).where(Job.key == key, Job.state == "leased", Job.lease_holder == holder)
                        .values(state=state, **faulted, lease_holder=None,
                                lease_expires_utc=None, finished_utc=None if state == "pending" else now)
                        .returning(Job.device_id)).first()
        if row is None:
            return False
        if state == "done" and record_json is not None:
            ins = insert_for(db, Result.__table__).values(
                job_key=key, status=status, record_json=record_json, p50_ms=p50_ms, p90_ms=p90_ms, mean_ms=mean_ms,
                peak_rss_delta_bytes=peak_rss_delta_bytes, artifact_sha256=artifact_sha256,
                runner_version=runner_version, device_id=row.device_id, created_utc=now)
            s.execute(ins.on_conflict_do_nothing(index_elements=["job_key"]))
        if device_update:
            s.execute(update(Device).where(Device.id == row.device_id).values(**device_update))
    return True


def requeue_expired(db: Database, run_id: str, now: Optional[float] = None) -> int:
    """Leased jobs whose lease has expired go back to pending (their holder died). Returns how many."""
    now = now or time.time()
    with db.session() as s:
        return len(s.execute(update(Job).where(Job.run_id == run_id, Job.state == "leased",
                                               Job.lease_expires_utc < now)
                             .values(state="pending", lease_holder=None, lease_expires_utc=None)
                             .returning(Job.key)).all())


def requeue_held(db: Database, run_id: str, holders: Iterable[str]) -> int:
    """The run's jobs leased to any of ``holders`` (a dead process, or ours on a hard stop) go back to
    pending; their interrupted attempt is not counted. Returns how many."""
    holders = list(holders)
    if not holders:
        return 0
    with db.session() as s:
        return len(s.execute(update(Job).where(Job.run_id == run_id, Job.state == "leased",
                                               Job.lease_holder.in_(holders))
                             .values(state="pending", lease_holder=None, lease_expires_utc=None,
                                     attempts=func.max(Job.attempts - 1, 0) if db.dialect == "sqlite"
                                     else func.greatest(Job.attempts - 1, 0))
                             .returning(Job.key)).all())


def lease_holders(db: Database, run_id: str) -> list[str]:
    """Who holds the run's leased jobs now (live or expired leases)."""
    with db.reader() as s:
        return list(s.scalars(select(Job.lease_holder).where(Job.run_id == run_id, Job.state == "leased")
                              .distinct()))


def reassign(db: Database, key: str, device_id: str) -> bool:
    """Move a pending job to another device; False if it is not pending."""
    with db.session() as s:
        return s.execute(update(Job).where(Job.key == key, Job.state == "pending")
                         .values(device_id=device_id).returning(Job.key)).first() is not None


def fail_pending(db: Database, run_id: str, device_id: str, *, fault_class: str, error: str,
                 now: Optional[float] = None) -> int:
    """The run's pending jobs on ``device_id`` end as failed with ``fault_class`` and ``error`` (no
    device can take them: its host is gone and it has no equivalent). Returns how many."""
    now = now or time.time()
    with db.session() as s:
        return len(s.execute(update(Job).where(Job.run_id == run_id, Job.device_id == device_id, Job.state == "pending")
                             .values(state="failed", fault_class=fault_class, error=error, finished_utc=now)
                             .returning(Job.key)).all())


def counts(db: Database, run_id: str) -> dict[str, int]:
    """How many of the run's jobs are in each state (every state present, 0 if none)."""
    with db.reader() as s:
        rows = s.execute(select(Job.state, func.count()).where(Job.run_id == run_id).group_by(Job.state)).all()
    out = dict.fromkeys(("pending", "leased", "done", "failed"), 0)
    out.update({state: n for state, n in rows})
    return out


def results(db: Database, run_id: str) -> list[dict[str, Any]]:
    """One row per job of the run: model, recipe, backend, format, device, launch, status ("ok" when
    measured, the record's status when it measured an error, else the job's fault or state), state,
    fault_class, error, attempts, p50_ms, p90_ms, mean_ms, peak_rss_delta_bytes, artifact_sha256."""
    q = (select(Job, Result).outerjoin(Result, Result.job_key == Job.key).where(Job.run_id == run_id)
         .order_by(Job.model, Job.recipe, Job.device_id, Job.launch, Job.key))
    out = []
    with db.reader() as s:
        for job, res in s.execute(q).all():
            status = res.status if res is not None else (job.fault_class or job.state)
            out.append({"key": job.key, "model": job.model, "recipe": job.recipe, "backend": job.backend,
                        "format": job.format, "device": job.device_id, "launch": job.launch, "status": status,
                        "state": job.state, "fault_class": job.fault_class, "error": job.error,
                        "attempts": job.attempts,
                        **{c: getattr(res, c) if res is not None else None
                           for c in ("p50_ms", "p90_ms", "mean_ms", "peak_rss_delta_bytes", "artifact_sha256")}})
    return out


def record(db: Database, key: str) -> Optional[dict[str, Any]]:
    """The stored BenchResult JSON of a job, parsed; None if it has no result."""
    with db.reader() as s:
        text = s.execute(select(Result.record_json).where(Result.job_key == key)).scalar()
    return json.loads(text) if text is not None else None


def pending_keys(db: Database, run_id: str, device_id: str) -> list[str]:
    """The keys of the run's pending jobs on ``device_id``."""
    with db.reader() as s:
        return list(s.scalars(select(Job.key).where(Job.run_id == run_id, Job.device_id == device_id,
                                                     Job.state == "pending").order_by(Job.key)))


def pending_by_device(db: Database, run_id: str) -> dict[str, int]:
    """How many pending (or lease-expired) jobs each device of the run has."""
    with db.reader() as s:
        rows = s.execute(select(Job.device_id, func.count()).where(Job.run_id == run_id, _claimable(time.time()))
                         .group_by(Job.device_id)).all()
    return {d: n for d, n in rows}
