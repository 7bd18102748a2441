"""The farm run: lower every (model, recipe, backend, format) once, journal the jobs in the
database, and run one worker per device on the executor, each on one measurement session.

A worker (``farm/worker.py``) holds its device's lease, claims that device's jobs one at a time and
finishes each with its record or its fault class and policy. This module prepares the run (devices
registered, artifacts lowered and recorded, jobs added, the leases of dead processes of this host
given back), runs workers in rounds (a job moved to an equivalent device after that device's worker
ran out of work is picked up by the next round) and handles Ctrl-C: the first marks the run
interrupted (no job starts any more, running ones finish), a second gives this process's running
jobs back to pending at once. Everything is in the database, so a resumed run (same ``run_id``, after
Ctrl-C or ``kill -9``) repeats no finished job and stores no result twice.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from edgeprobe.farm import faults, fleet, jobs, leases
from edgeprobe.farm.executors import Executor, ThreadExecutor
from edgeprobe.farm.inventory import DeviceEntry, FarmFile, check_tokens, select
from edgeprobe.farm.matrix import Settings, artifact_groups, expand
from edgeprobe.farm.worker import (BUSY, FINISHED, HOST_LOST, QUARANTINED, Limits, Log, Opener, Worker, open_by_id)

EXIT_ALL_MEASURED, EXIT_SOME_FAILED, EXIT_FARM_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass(frozen=True)
class FarmSummary:
    run_id: str
    db_url: str
    counts: dict[str, int]  # jobs per state: pending, leased, done, failed
    lowering_errors: dict[str, str]  # "model/recipe/backend/format" -> error, for groups that did not lower
    wall_s: float
    state: str = "done"  # the run's state: done, incomplete (jobs left: devices busy or quarantined), interrupted, failed
    notes: tuple[str, ...] = ()  # devices that were busy, quarantined, or whose worker failed

    @property
    def exit_code(self) -> int:
        if self.state == "interrupted":
            return EXIT_INTERRUPTED
        measured_all = self.counts.get("done", 0) == sum(self.counts.values()) and not self.lowering_errors
        return EXIT_ALL_MEASURED if measured_all else EXIT_SOME_FAILED


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _lower_groups(farm: FarmFile, db: Any, log: Log) -> tuple[dict, dict, dict[str, str]]:
    """Every group lowered once on the host (cached): ``(artifact_keys, artifacts, errors)``; a group
    that fails is kept with its error, so its jobs become failed rows and nothing else stops."""
    from edgeprobe import compress
    from edgeprobe.models import load_model

    keys: dict[tuple, Optional[str]] = {}
    artifacts: dict[str, Any] = {}
    errors: dict[str, str] = {}
    specs: dict[str, Any] = {}
    for group in artifact_groups(farm):
        model, recipe, backend, fmt = group
        name = "/".join(group)
        log(f"lowering {name}")
        try:
            if model not in specs:
                specs[model] = load_model(model)
            spec = specs[model]
            if spec.module is None:
                from edgeprobe.errors import LoweringError

                raise LoweringError(f"{model} is not an eager module; the farm compresses modules")
            ctx = compress.Context(example_inputs=spec.example_inputs, log=log)
            _, _, art = compress.apply_and_lower(spec, recipe, ctx, module=spec.module.eval(), format=fmt,
                                                 backend=backend, progress=log)
            keys[group] = art.manifest.cache_key
            artifacts[art.manifest.cache_key] = art
            jobs.add_artifact(db, art, group)
        except Exception as exc:  # noqa: BLE001 - one bad model never stops the farm: a failed row
            keys[group] = None
            errors[name] = faults.one_line(exc)
            log(f"{name}: lowering failed: {errors[name]}")
    return keys, artifacts, errors


def with_discovered(farm: FarmFile, log: Log) -> FarmFile:
    """``discover = true``: add every device ``edgeprobe devices`` finds healthy that the file does
    not list (no labels; a zeroconf runner's token from ``$EDGEPROBE_TOKEN``)."""
    import os

    from edgeprobe.devices.discovery import list_devices

    listed = {d.id for d in farm.devices}
    found = []
    for info in list_devices(log=log):
        if info.id in listed or not info.health.startswith("ok"):
            continue
        token_env = "EDGEPROBE_TOKEN" if info.transport == "tcp" and os.environ.get("EDGEPROBE_TOKEN") else None
        found.append(DeviceEntry(info.id, {}, token_env, 0, f"{farm.path} (discovered)"))
        log(f"discovered {info.id} ({info.description or info.transport})")
    return dataclasses.replace(farm, devices=farm.devices + tuple(found))


def _wait(handles: list, poll_s: float = 0.2) -> None:
    """Until every handle is done (a sleep loop, so Ctrl-C reaches this thread at once)."""
    while not all(h.done() for _, h in handles):
        time.sleep(poll_s)


def _equivalents(dev: DeviceEntry, devices: list[DeviceEntry], out: set[str], db: Any) -> list[str]:
    """The other devices with the same (non-empty) labels that can take work now, those on other
    hosts first (a farm on Ray: a job moved off a host that died must not land on that host again)."""
    def usable(d: DeviceEntry) -> bool:
        h = fleet.health(db, d.id)
        return d.id not in out and (h is None or h.status != fleet.QUARANTINED)

    same = [d for d in devices if d.id != dev.id and d.labels and dict(d.labels) == dict(dev.labels) and usable(d)]
    return [d.id for d in sorted(same, key=lambda d: dev.host is not None and d.host == dev.host)]


def _move_off(db: Any, run_id: str, dev: DeviceEntry, devices: list[DeviceEntry], out: set[str], why: str) -> int:
    """A device whose host is gone: its pending jobs to equivalent devices still in the run (round
    robin), or, with none left, failed with ``why`` (nothing could ever take them: they must not
    wait for a host that is gone)."""
    targets = _equivalents(dev, devices, out, db)
    if not targets:
        return -jobs.fail_pending(db, run_id, dev.id, fault_class=faults.HOST_LOST,
                                  error=f"no device of this run can take it: {why}")
    keys = jobs.pending_keys(db, run_id, dev.id)
    return sum(jobs.reassign(db, key, targets[i % len(targets)]) for i, key in enumerate(keys))


def run_farm(farm: FarmFile, *, db: Any, run_id: Optional[str] = None, max_attempts: int = 3,
             lease_ttl_s: float = 120.0, lease_wait_s: float = 900.0, quarantine_after: int = 3,
             quarantine_s: float = 1800.0, executor: Optional[Executor] = None, opener: Opener = open_by_id,
             log: Optional[Log] = None) -> FarmSummary:
    """Run (or resume, with the same ``run_id``) the farm file's matrix; returns the run's summary.

    ``lease_wait_s``: how long a worker waits for a device another farm process holds;
    ``quarantine_after`` infrastructure faults in a row quarantine a device for ``quarantine_s``."""
    say = log or (lambda _m: None)
    t0 = time.monotonic()
    if farm.discover:
        farm = with_discovered(farm, say)
    devices = select(farm)
    check_tokens(farm, devices)
    run_id = run_id or new_run_id()
    jobs.add_run(db, run_id, str(farm.path))
    jobs.set_run_state(db, run_id, "running")  # a resumed run (interrupted, incomplete) runs again
    try:
        fleet.register(db, devices)
        keys, artifacts, errors = _lower_groups(farm, db, say)
        added = jobs.add_jobs(db, run_id, expand(farm, keys, devices, run_id=run_id))
    except KeyboardInterrupt:  # while lowering: nothing is leased yet
        jobs.set_run_state(db, run_id, "interrupted")
        raise
    dead = [h for h in jobs.lease_holders(db, run_id) if h and leases.holder_is_dead(h)]
    requeued = jobs.requeue_held(db, run_id, dead) + jobs.requeue_expired(db, run_id)
    for d in devices:
        if leases.clear_dead(db, d.id):
            say(f"{d.id}: lease of a dead farm process of this host given back")
    say(f"run {run_id}: {added} new jobs" + (f", {requeued} requeued from an earlier process" if requeued else ""))
    nonce = uuid.uuid4().hex[:8]
    limits = Limits(max_attempts, lease_ttl_s, lease_wait_s, quarantine_after, quarantine_s)
    by_group_error = {g: errors["/".join(g)] for g, k in keys.items() if k is None}
    executor = executor or ThreadExecutor()
    out: set[str] = set()  # devices done with for this run: busy, quarantined, or their worker failed
    lost: dict[str, str] = {}  # of those, the devices whose host is gone (a farm on Ray), and why
    notes: list[str] = []
    state = None
    for _round in range(max_attempts + 1):
        waiting = {d for d, n in jobs.pending_by_device(db, run_id).items() if n} - out
        todo = [d for d in devices if d.id in waiting]
        if not todo:
            break
        handles = [(dev.id, executor.submit(dev.id, Worker(
            db, run_id, dev, leases.holder_name(nonce, dev.id), _equivalents(dev, devices, out, db), artifacts,
            by_group_error, limits, say, opener))) for dev in todo]
        try:
            _wait(handles)
        except KeyboardInterrupt:
            state = "interrupted"
            jobs.set_run_state(db, run_id, state)
            say("interrupted: no new job starts; running jobs finish (Ctrl-C again to stop now)")
            try:
                _wait(handles)
            except KeyboardInterrupt:
                holders = [leases.holder_name(nonce, d.id) for d in devices]
                n = jobs.requeue_held(db, run_id, holders)
                leases.release_all(db, holders)
                say(f"stopped now: {n} running job(s) back to pending, leases released")
                break
        for dev_id, h in handles:
            if not h.done():
                continue
            try:
                outcome = h.result()
            except Exception as exc:  # noqa: BLE001 - a worker's own bug: its device is out, the rest go on
                outcome = f"worker failed: {faults.one_line(exc)}"
                say(f"{dev_id}: {outcome}")
            if outcome != FINISHED:
                out.add(dev_id)
                notes.append(f"{dev_id}: {outcome}")
            if outcome.startswith(HOST_LOST):
                lost[dev_id] = outcome[len(HOST_LOST):].strip(" ()") or "its host is gone"
        for dev in devices:  # after the round, so that every device of a host that died is out by now
            if dev.id in lost:
                moved = _move_off(db, run_id, dev, devices, out, lost[dev.id])
                if moved > 0:
                    say(f"{dev.id}: host lost; {moved} pending job(s) moved to equivalent devices")
                elif moved < 0:
                    say(f"{dev.id}: host lost and no equivalent device left; {-moved} pending job(s) failed")
        if state == "interrupted":
            break
    counts = jobs.counts(db, run_id)
    if state is None:
        left = counts["pending"] + counts["leased"]
        state = "incomplete" if left else ("done" if not counts["failed"] and not errors else "failed")
    summary = FarmSummary(run_id, db.url, counts, errors, time.monotonic() - t0, state, tuple(notes))
    jobs.set_run_state(db, run_id, state, {"counts": counts, "lowering_errors": errors, "notes": list(notes)})
    return summary


__all__ = ["FarmSummary", "Settings", "run_farm", "new_run_id", "open_by_id", "EXIT_ALL_MEASURED",
           "EXIT_SOME_FAILED", "EXIT_FARM_FAILED", "EXIT_INTERRUPTED", "BUSY", "QUARANTINED"]
