"""One device's worker of a farm run: lease the device, claim its jobs one at a time, measure each
on one measurement session, finish it with its record or its fault class and policy.

- **Lease.** The device's lease is a database row (``farm/leases.py``), taken at the start (waiting
  up to ``lease_wait_s`` while another farm process holds it; a lease of a dead process of this host
  is taken back at once) and heart-beaten by a small thread every third of its TTL, together with
  the lease of the job being measured, so a long measurement never looks dead. A worker whose lease
  was lost (expired and taken over) claims nothing more.
- **Jobs.** ``jobs.claim`` hands out one pending job at a time, and none once the run is interrupted.
  A fault follows ``farm/faults.py``: retried here, moved to an equivalent device (same labels), or
  failed.
- **Quarantine.** Infrastructure faults extend the device's failure streak in the ``devices`` table
  (``farm/fleet.py``). ``quarantine_after`` of them in a row quarantine the device for
  ``quarantine_s``, and its pending jobs move to equivalent devices. A quarantined device gets no
  work. Once the quarantine has run out, the device is on probation: its worker first measures the
  run's smallest artifact once (the health check), and takes jobs only if that passes.

The worker talks to the rest of the farm only through the database, so it can run in any executor.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from edgeprobe.farm import faults, fleet, jobs, leases
from edgeprobe.farm.inventory import DeviceEntry, token_for

Log = Callable[[str], None]
# how a worker opens its device: (device entry, artifact format) -> a MeasureSession. The default
# opens it by id through the device registry; benchmarks and unit tests pass sessions on a MockTransport.
Opener = Callable[[DeviceEntry, str], Any]
# what a worker returns: it ran out of work, or why it stopped early
FINISHED, BUSY, QUARANTINED, STOPPED, LEASE_LOST = ("finished", "busy: leased by another farm process",
                                                    "quarantined", "stopped: the run was interrupted",
                                                    "lease lost: expired and taken over")
HOST_LOST = "host lost"  # a farm on Ray: the device's host is gone; the scheduler moves its jobs
HEALTH_CHECK_TIMEOUT_S = 120.0


def open_by_id(device: DeviceEntry, format: str) -> Any:
    """The default ``Opener``: the device by its id, with the format's default runner and its token."""
    from edgeprobe.devices import default_runner
    from edgeprobe.session import open_session

    return open_session(device.id, runner=default_runner(format), token=token_for(device))


@dataclass(frozen=True)
class Limits:
    max_attempts: int  # per job, over every device
    lease_ttl_s: float
    lease_wait_s: float  # how long to wait for a device another farm process holds
    quarantine_after: int  # infrastructure faults in a row
    quarantine_s: float


def utc(t: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t is not None else "—"


def config_of(settings: dict) -> Any:
    """The job's measurement settings as the session's MeasureConfig (no retries: the farm retries)."""
    from edgeprobe.session import MeasureConfig

    return MeasureConfig(warmup=settings["warmup"], iterations=settings["iterations"],
                         min_seconds=settings["min_seconds"], max_iterations=settings.get("max_iterations") or 0,
                         threads=settings["threads"],
                         timeout_s=settings["timeout_s"], min_battery_percent=settings.get("min_battery_percent"),
                         max_thermal_status=settings.get("max_thermal_status"), retries=0)


class _Heartbeat:
    """Extends the device lease, and the current job's lease, every third of the TTL while a job runs."""

    def __init__(self, db: Any, device_id: str, holder: str, ttl_s: float) -> None:
        self.db, self.device_id, self.holder, self.ttl_s = db, device_id, holder, ttl_s
        self.job_key: Optional[str] = None
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{device_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not leases.heartbeat(self.db, self.device_id, self.holder, self.ttl_s):
                    self.lost = True
                key = self.job_key
                if key is not None:
                    jobs.extend(self.db, key, self.holder, self.ttl_s)
            except Exception:  # noqa: BLE001 - a busy database skips one beat; the TTL leaves room for two more
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _close(session: Any) -> None:
    try:
        session.close()
    except Exception:  # noqa: BLE001 - closing a device that is gone must not hide the outcome
        pass


@dataclass
class Worker:
    """One device's loop (see the module docstring); returns FINISHED or why it stopped early."""

    db: Any
    run_id: str
    device: DeviceEntry
    holder: str
    equivalents: list[str]  # other devices of this run with the same labels
    artifacts: dict[str, Any]
    lowering_errors: dict[tuple, str]
    limits: Limits
    log: Log
    opener: Opener = open_by_id
    last_error: Optional[str] = None  # of the last fault, for the outcome of a worker whose host is gone

    def __call__(self) -> str:
        dev = self.device.id
        health = fleet.health(self.db, dev)
        if health is not None and health.status == fleet.QUARANTINED:
            self.log(f"{dev}: quarantined until {utc(health.quarantined_until)} ({health.quarantine_reason}); "
                     "no work for it")
            self._hand_off()
            return QUARANTINED
        if not self._lease():
            return BUSY if jobs.run_state(self.db, self.run_id) == "running" else STOPPED
        beat = _Heartbeat(self.db, dev, self.holder, self.limits.lease_ttl_s)
        sessions: dict[str, Any] = {}  # one per artifact format: each format has its own runner
        try:
            if health is not None and health.status == fleet.PROBATION and not self._health_check(sessions):
                return QUARANTINED
            while True:
                # the claim itself checks that we still hold the device's lease (the thread beats it)
                job = None if beat.lost else jobs.claim(self.db, self.run_id, dev, self.holder,
                                                        self.limits.lease_ttl_s, device_lease=True)
                if job is None:
                    if beat.lost or leases.holder_of(self.db, dev) != self.holder:
                        self.log(f"{dev}: lease lost (expired and taken over); this worker stops")
                        return LEASE_LOST
                    return FINISHED if jobs.run_state(self.db, self.run_id) == "running" else STOPPED
                beat.job_key = job.key
                fault = self._one(job, sessions)
                beat.job_key = None
                if fault == faults.HOST_LOST:  # nothing more can run here; the scheduler moves the rest
                    return f"{HOST_LOST} ({self.last_error})"
                if fault and faults.POLICIES[fault].infrastructure:
                    streak = fleet.record_fault(self.db, dev, infrastructure=True, lost=fault == faults.DEVICE_LOST)
                    if streak >= self.limits.quarantine_after:
                        self._quarantine(f"{streak} infrastructure faults in a row, the last {fault}")
                        return QUARANTINED
                cooldown = (job.settings or {}).get("cooldown_s") or 0.0
                if cooldown:
                    time.sleep(cooldown)
        finally:
            beat.stop()
            for session in sessions.values():
                _close(session)
            leases.release(self.db, dev, self.holder)

    def _lease(self) -> bool:
        """Take the device's lease, waiting up to ``lease_wait_s`` while another farm process holds it."""
        deadline, said = time.monotonic() + self.limits.lease_wait_s, False
        while True:
            if leases.acquire(self.db, self.device.id, self.holder, self.limits.lease_ttl_s):
                return True
            if leases.clear_dead(self.db, self.device.id):
                self.log(f"{self.device.id}: lease of a dead farm process of this host given back")
                continue
            other = leases.holder_of(self.db, self.device.id)
            if time.monotonic() >= deadline or jobs.run_state(self.db, self.run_id) != "running":
                self.log(f"{self.device.id}: leased by {other}; not used by this run")
                return False
            if not said:
                self.log(f"{self.device.id}: leased by {other}; waiting up to {self.limits.lease_wait_s:.0f} s")
                said = True
            time.sleep(min(2.0, max(0.05, self.limits.lease_ttl_s / 4)))

    def _quarantine(self, reason: str) -> None:
        until = fleet.quarantine(self.db, self.device.id, quarantine_s=self.limits.quarantine_s, reason=reason)
        moved = self._hand_off()
        self.log(f"{self.device.id}: quarantined until {utc(until)} ({reason})"
                 + (f"; {moved} pending job(s) moved to equivalent devices" if moved else ""))

    def _health_check(self, sessions: dict[str, Any]) -> bool:
        """On probation: measure the run's smallest artifact once; pass clears the quarantine, a
        failure quarantines the device again."""
        dev = self.device.id
        if not self.artifacts:
            return True  # nothing to measure with: its jobs (all failed rows) need no device
        art = min(self.artifacts.values(), key=lambda a: a.model_path.stat().st_size)
        cfg = dataclasses.replace(config_of({"warmup": 0, "iterations": 1, "min_seconds": 0.0, "threads": 0,
                                             "timeout_s": HEALTH_CHECK_TIMEOUT_S}), max_iterations=1)
        why = None
        try:
            session = sessions[art.manifest.format] = self.opener(self.device, art.manifest.format)
            result = session.measure(art, cfg)
            if not result.ok:
                why = f"{result.run.error.code}: {result.run.error.message}" if result.run.error else "run failed"
        except Exception as exc:  # noqa: BLE001 - any failure fails the check
            why = faults.one_line(exc)
        if why is None:
            fleet.pass_probation(self.db, dev)
            self.log(f"{dev}: health check passed (quarantine over)")
            return True
        self._quarantine(f"health check failed: {why}")
        return False

    def _one(self, job: Any, sessions: dict[str, Any]) -> Optional[str]:
        """Measure one claimed job on this format's session (opened on first use) and finish it;
        returns its fault class, None when measured."""
        dev = self.device.id
        what = f"{dev}: {job.model}/{job.recipe} launch {job.launch}"
        art = self.artifacts.get(job.artifact_key) if job.artifact_key else None
        if art is None:
            error = self.lowering_errors.get((job.model, job.recipe, job.backend, job.format), "not lowered")
            jobs.finish(self.db, job.key, self.holder, state="failed", fault_class=faults.MODEL_ERROR, error=error)
            self.log(f"{what}: failed (model_error: {error})")
            return faults.MODEL_ERROR
        result, error = None, None
        try:
            if job.format not in sessions:
                sessions[job.format] = self.opener(self.device, job.format)
            result = sessions[job.format].measure(art, config_of(job.settings or {}))
            fault = faults.classify_result(result)
            if fault:
                error = f"{result.run.error.code}: {result.run.error.message}" if result.run.error else "run failed"
                tail = getattr(result.run.error, "stderr_tail", None) if result.run.error else None
                if tail and fault in (faults.RUNNER_CRASH, faults.TIMEOUT):
                    error += " | stderr: " + " ".join(tail.split())[-400:]
        except Exception as exc:  # noqa: BLE001 - classified; a host_error is failed, never retried silently
            fault, error = faults.classify_exception(exc), faults.one_line(exc)
            if fault == faults.DEVICE_LOST and job.format in sessions:
                _close(sessions.pop(job.format))  # re-opened for the next attempt
        if fault is None:
            env = result.run.environment
            jobs.finish(self.db, job.key, self.holder, state="done", **jobs.result_fields(result),
                        device_update=fleet.success_values(dataclasses.asdict(env) if env is not None else None))
            self.log(f"{what}: ok, p50 {result.stats.p50_ms:.3f} ms" if result.stats else f"{what}: ok")
            return None
        self._after_fault(job, fault, error, result, what)
        return fault

    def _after_fault(self, job: Any, fault: str, error: Optional[str], result: Any, what: str) -> None:
        self.last_error = error
        policy = faults.POLICIES[fault]
        fields = jobs.result_fields(result) if result is not None else {}
        left = job.attempts < self.limits.max_attempts
        if left and faults.should_retry_here(fault, job.attempts):
            jobs.finish(self.db, job.key, self.holder, state="pending", fault_class=fault, error=error)
            self.log(f"{what}: {fault} ({error}); retrying here")
        elif left and policy.move_to_equivalent and self.equivalents:
            jobs.finish(self.db, job.key, self.holder, state="pending", fault_class=fault, error=error)
            jobs.reassign(self.db, job.key, self.equivalents[0])
            self.log(f"{what}: {fault} ({error}); moved to {self.equivalents[0]}")
        else:
            jobs.finish(self.db, job.key, self.holder, state="failed", fault_class=fault, error=error, **fields)
            self.log(f"{what}: failed ({fault}: {error})")

    def _hand_off(self) -> int:
        """Move this device's pending jobs to equivalent devices (round robin), if it has any."""
        if not self.equivalents:
            return 0
        keys = jobs.pending_keys(self.db, self.run_id, self.device.id)
        return sum(jobs.reassign(self.db, key, self.equivalents[i % len(self.equivalents)])
                   for i, key in enumerate(keys))
