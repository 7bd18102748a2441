"""The farm run: lower every (model, recipe, backend, format) once, journal the jobs in the
database, and run one worker per device on the executor, each on one measurement session.

A worker holds its device's lease (a database row with a TTL, heart-beaten), claims that device's
jobs one at a time, measures each through its ``MeasureSession`` (opened once, re-opened after a
lost connection), and finishes it with its record, or with its fault class and the policy of
``farm/faults.py``: a retry here (the job goes back to pending), a move to an equivalent device
(same labels), or failed. A device with ``quarantine_after`` infrastructure faults in a row stops
taking work for the rest of the run (its pending jobs move to equivalent devices where there are
some). Everything a worker knows it reads from the database, so a second farm process, or a
resumed one after ``kill -9``, picks up where this one left off: expired job leases go back to
pending, finished jobs are never repeated (their key is unique), results are written once.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

from edgeprobe.farm import faults, jobs, leases
from edgeprobe.farm.executor import Executor, ThreadExecutor
from edgeprobe.farm.inventory import DeviceEntry, FarmFile, check_tokens, select, token_for
from edgeprobe.farm.matrix import Settings, artifact_groups, expand

Log = Callable[[str], None]
# how a worker opens its device: (device entry, artifact format) -> a MeasureSession. The default
# opens it by id through the device registry; benchmarks and unit tests pass sessions on a MockTransport.
Opener = Callable[[DeviceEntry, str], Any]
EXIT_ALL_MEASURED, EXIT_SOME_FAILED, EXIT_FARM_FAILED = 0, 1, 2


@dataclass(frozen=True)
class FarmSummary:
    run_id: str
    db_url: str
    counts: dict[str, int]  # jobs per state: pending, leased, done, failed
    lowering_errors: dict[str, str]  # "model/recipe/backend/format" -> error, for groups that did not lower
    wall_s: float

    @property
    def exit_code(self) -> int:
        measured_all = self.counts.get("done", 0) == sum(self.counts.values()) and not self.lowering_errors
        return EXIT_ALL_MEASURED if measured_all else EXIT_SOME_FAILED


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _lower_groups(farm: FarmFile, log: Log) -> tuple[dict, dict, dict[str, str]]:
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
        except Exception as exc:  # noqa: BLE001 - one bad model never stops the farm: a failed row
            keys[group] = None
            errors[name] = faults.one_line(exc)
            log(f"{name}: lowering failed: {errors[name]}")
    return keys, artifacts, errors


def _config(settings: dict) -> Any:
    from edgeprobe.session import MeasureConfig

    return MeasureConfig(warmup=settings["warmup"], iterations=settings["iterations"],
                         min_seconds=settings["min_seconds"], max_iterations=settings.get("max_iterations") or 0,
                         threads=settings["threads"],
                         timeout_s=settings["timeout_s"], min_battery_percent=settings.get("min_battery_percent"),
                         max_thermal_status=settings.get("max_thermal_status"), retries=0)


@dataclass
class _Worker:
    """One device's loop (see the module docstring); returns whether the device was quarantined."""

    db: Any
    run_id: str
    device: DeviceEntry
    equivalents: list[str]  # other devices of this run with the same labels
    artifacts: dict[str, Any]
    lowering_errors: dict[tuple, str]
    max_attempts: int
    lease_ttl_s: float
    quarantine_after: int
    log: Log
    opener: Opener

    def __call__(self) -> bool:
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if not leases.acquire(self.db, self.device.id, holder, self.lease_ttl_s):
            self.log(f"{self.device.id}: leased by another farm process; not used by this one")
            return False
        session, failures = None, 0
        try:
            while True:
                if not leases.heartbeat(self.db, self.device.id, holder, self.lease_ttl_s):
                    self.log(f"{self.device.id}: lease lost (expired and taken over); this worker stops")
                    return False
                job = jobs.claim(self.db, self.run_id, self.device.id, holder, self.lease_ttl_s)
                if job is None:
                    return False
                session, fault = self._one(job, holder, session)
                failures = failures + 1 if fault and faults.POLICIES[fault].infrastructure else 0
                if failures >= self.quarantine_after:
                    self.log(f"{self.device.id}: {failures} infrastructure faults in a row; quarantined for this run")
                    self._hand_off()
                    return True
                cooldown = (job.settings or {}).get("cooldown_s") or 0.0
                if cooldown:
                    time.sleep(cooldown)
        finally:
            if session is not None:
                session.close()
            leases.release(self.db, self.device.id, holder)

    def _one(self, job: Any, holder: str, session: Any) -> tuple[Any, Optional[str]]:
        what = f"{self.device.id}: {job.model}/{job.recipe} launch {job.launch}"
        art = self.artifacts.get(job.artifact_key) if job.artifact_key else None
        if art is None:
            error = self.lowering_errors.get((job.model, job.recipe, job.backend, job.format), "not lowered")
            jobs.finish(self.db, job.key, holder, state="failed", fault_class=faults.MODEL_ERROR, error=error)
            self.log(f"{what}: failed (model_error: {error})")
            return session, faults.MODEL_ERROR
        result, error = None, None
        try:
            if session is None:
                session = self.opener(self.device, job.format)
            result = session.measure(art, _config(job.settings or {}))
            fault = faults.classify_result(result)
            if fault:
                error = f"{result.run.error.code}: {result.run.error.message}" if result.run.error else "run failed"
        except Exception as exc:  # noqa: BLE001 - classified; a host_error is failed, never retried silently
            fault, error = faults.classify_exception(exc), faults.one_line(exc)
            if fault == faults.DEVICE_LOST and session is not None:
                session.close()
                session = None  # re-opened for the next attempt
        if fault is None:
            jobs.finish(self.db, job.key, holder, state="done", **jobs.result_fields(result))
            self.log(f"{what}: ok, p50 {result.stats.p50_ms:.3f} ms" if result.stats else f"{what}: ok")
            return session, None
        policy = faults.POLICIES[fault]
        fields = jobs.result_fields(result) if result is not None else {}
        if job.attempts < self.max_attempts and faults.should_retry_here(fault, job.attempts):
            jobs.finish(self.db, job.key, holder, state="pending", fault_class=fault, error=error)
            self.log(f"{what}: {fault} ({error}); retrying here")
        elif job.attempts < self.max_attempts and policy.move_to_equivalent and self.equivalents:
            jobs.finish(self.db, job.key, holder, state="pending", fault_class=fault, error=error)
            jobs.reassign(self.db, job.key, self.equivalents[0])
            self.log(f"{what}: {fault} ({error}); moved to {self.equivalents[0]}")
        else:
            jobs.finish(self.db, job.key, holder, state="failed", fault_class=fault, error=error, **fields)
            self.log(f"{what}: failed ({fault}: {error})")
        return session, fault

    def _hand_off(self) -> None:
        """Move this device's pending jobs to equivalent devices (round robin), if it has any."""
        if not self.equivalents:
            return
        for i, key in enumerate(jobs.pending_keys(self.db, self.run_id, self.device.id)):
            jobs.reassign(self.db, key, self.equivalents[i % len(self.equivalents)])


def open_by_id(device: DeviceEntry, format: str) -> Any:
    """The default ``Opener``: the device by its id, with the format's default runner and its token."""
    from edgeprobe.devices import default_runner
    from edgeprobe.session import open_session

    return open_session(device.id, runner=default_runner(format), token=token_for(device))


def run_farm(farm: FarmFile, *, db: Any, run_id: Optional[str] = None, max_attempts: int = 3,
             lease_ttl_s: float = 120.0, quarantine_after: int = 3, executor: Optional[Executor] = None,
             opener: Opener = open_by_id, log: Optional[Log] = None) -> FarmSummary:
    """Run (or resume, with the same ``run_id``) the farm file's matrix; returns the run's summary."""
    say = log or (lambda _m: None)
    t0 = time.monotonic()
    devices = select(farm)
    check_tokens(farm, devices)
    run_id = run_id or new_run_id()
    jobs.add_run(db, run_id, str(farm.path))
    keys, artifacts, errors = _lower_groups(farm, say)
    added = jobs.add_jobs(db, run_id, expand(farm, keys, devices))
    requeued = jobs.requeue_expired(db, run_id)
    say(f"run {run_id}: {added} new jobs" + (f", {requeued} requeued from an earlier process" if requeued else ""))
    by_group_error = {g: errors["/".join(g)] for g, k in keys.items() if k is None}
    executor = executor or ThreadExecutor()
    quarantined: set[str] = set()
    # rounds: a job moved to an equivalent device after that device's worker ran out of work is
    # picked up by the next round; bounded, since every move or retry costs an attempt
    for _round in range(max_attempts + 1):
        waiting = {d for d, n in jobs.pending_by_device(db, run_id).items() if n} - quarantined
        todo = [d for d in devices if d.id in waiting]
        if not todo:
            break
        handles = []
        for dev in todo:
            equivalents = [d.id for d in devices if d.id != dev.id and d.id not in quarantined and d.labels
                           and dict(d.labels) == dict(dev.labels)]
            handles.append((dev.id, executor.submit(dev.id, _Worker(
                db, run_id, dev, equivalents, artifacts, by_group_error, max_attempts, lease_ttl_s,
                quarantine_after, say, opener))))
        try:
            for dev_id, h in handles:
                if h.result():
                    quarantined.add(dev_id)
        except KeyboardInterrupt:
            jobs.set_run_state(db, run_id, "interrupted")
            raise
    counts = jobs.counts(db, run_id)
    summary = FarmSummary(run_id, db.url, counts, errors, time.monotonic() - t0)
    jobs.set_run_state(db, run_id, "done" if summary.exit_code == EXIT_ALL_MEASURED else "failed",
                       {"counts": counts, "lowering_errors": errors})
    return summary


__all__ = ["FarmSummary", "Settings", "run_farm", "new_run_id", "EXIT_ALL_MEASURED", "EXIT_SOME_FAILED",
           "EXIT_FARM_FAILED"]
