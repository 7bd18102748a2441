"""The live progress of a farm run, read from the database: per device its current job, done /
failed / left and an estimated time to finish.

It polls the job table instead of listening to the workers, so it shows any executor's workers
(threads here, processes on other hosts later) and works from a second process watching a run.
``snapshot`` is three queries in one transaction, none of which reads a row per job: counts per
(device, state) grouped in SQL, the median job duration per device by window functions (SQLite
>= 3.25 and PostgreSQL alike), and the leased jobs (about one per device).

The ETA is an estimate (rendered with "~"): the median duration of the device's jobs finished in
this run times its jobs left (pending + leased); none ("—") before the device has finished one.
Devices run in parallel, so the run's ETA is the largest device's, and none while a device with
work left has no estimate yet (or while the run has no jobs: they are added after lowering). Times are UTC epoch float seconds, as in the jobs table.

``LiveProgress(db, run_id, console)`` wraps a run: on a terminal a daemon thread redraws a
``rich.live.Live`` table every ``interval_s``, and the final table stays on screen; elsewhere it
does nothing (the scheduler's log lines are the progress there). A tick that fails (a database
briefly locked, a connection dropped) is skipped: showing progress must never stop the farm.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from sqlalchemy import and_, func, select

from edgeprobe.farm.db.engine import Database
from edgeprobe.farm.db.models import Job

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

_LEFT_STATES = ("pending", "leased")
NO_ESTIMATE = "—"


@dataclass(frozen=True)
class DeviceProgress:
    device_id: str
    current: Optional[str]  # the job leased now, "model/recipe #launch"; None when idle
    current_running_s: Optional[float]  # how long the current job has been running (since its claim)
    done: int
    failed: int
    left: int  # pending + leased
    median_job_s: Optional[float]  # median duration of this device's finished jobs in this run
    eta_s: Optional[float]  # estimate: median_job_s * left; 0 when nothing is left; None before a finish


@dataclass(frozen=True)
class RunProgress:
    run_id: str
    devices: tuple[DeviceProgress, ...]  # by device id
    done: int
    failed: int
    left: int
    eta_s: Optional[float]  # max over devices; None while a device with work left has no estimate

    @property
    def total(self) -> int:
        return self.done + self.failed + self.left


def _medians(s: Any, run_id: str) -> dict[str, float]:
    """device -> median (finished - started) of its finished jobs, in SQL: rank each device's
    durations, keep the middle one (odd count) or two (even), average them."""
    dur = (Job.finished_utc - Job.started_utc).label("dur")
    ranked = (select(Job.device_id.label("device_id"), dur,
                     func.row_number().over(partition_by=Job.device_id, order_by=dur).label("rn"),
                     func.count().over(partition_by=Job.device_id).label("n"))
              .where(Job.run_id == run_id, Job.finished_utc.is_not(None), Job.started_utc.is_not(None))
              .subquery())
    middle = and_(2 * ranked.c.rn >= ranked.c.n, 2 * ranked.c.rn <= ranked.c.n + 2)
    rows = s.execute(select(ranked.c.device_id, func.avg(ranked.c.dur)).where(middle)
                     .group_by(ranked.c.device_id)).all()
    return {d: float(m) for d, m in rows}


def snapshot(db: Database, run_id: str, *, now: Optional[float] = None) -> RunProgress:
    """Where the run stands now (``now``: UTC epoch seconds, for the current jobs' running time)."""
    now = time.time() if now is None else now
    with db.reader() as s:
        counts = s.execute(select(Job.device_id, Job.state, func.count()).where(Job.run_id == run_id)
                           .group_by(Job.device_id, Job.state)).all()
        medians = _medians(s, run_id)
        leased = s.execute(select(Job.device_id, Job.model, Job.recipe, Job.launch, Job.started_utc)
                           .where(Job.run_id == run_id, Job.state == "leased")
                           .order_by(Job.started_utc)).all()
    by_state: dict[str, dict[str, int]] = {}
    for device_id, state, n in counts:
        by_state.setdefault(device_id, {})[state] = n
    current = {row.device_id: row for row in leased}  # the latest claim of each device wins
    devices = []
    for device_id in sorted(by_state):
        n = by_state[device_id]
        left = sum(n.get(st, 0) for st in _LEFT_STATES)
        median = medians.get(device_id)
        eta = 0.0 if left == 0 else (median * left if median is not None else None)
        job = current.get(device_id)
        devices.append(DeviceProgress(
            device_id=device_id,
            current=f"{job.model}/{job.recipe} #{job.launch}" if job is not None else None,
            current_running_s=max(0.0, now - job.started_utc) if job is not None and job.started_utc else None,
            done=n.get("done", 0), failed=n.get("failed", 0), left=left, median_job_s=median, eta_s=eta))
    etas = [d.eta_s for d in devices]
    run_eta = None if not etas or any(e is None for e in etas) else max(etas)
    return RunProgress(run_id=run_id, devices=tuple(devices), done=sum(d.done for d in devices),
                       failed=sum(d.failed for d in devices), left=sum(d.left for d in devices), eta_s=run_eta)


def duration(seconds: Optional[float]) -> str:
    """A short human duration: "42 s", "3m 05s", "2h 07m"; "—" for none."""
    if seconds is None:
        return NO_ESTIMATE
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _eta(seconds: Optional[float]) -> str:
    return NO_ESTIMATE if seconds is None else f"~{duration(seconds)}"


def render(progress: RunProgress) -> Table:
    """The progress as a table: one row per device and a total row (the run's ETA)."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"farm run {escape(progress.run_id)}: {progress.done + progress.failed}/{progress.total} jobs",
              show_footer=False)
    t.add_column("device")
    t.add_column("current job")
    for col in ("done", "failed", "left"):
        t.add_column(col, justify="right")
    t.add_column("ETA", justify="right")
    for d in progress.devices:
        current = (f"{escape(d.current)} ({duration(d.current_running_s)})" if d.current is not None
                   and d.current_running_s is not None else escape(d.current or "idle"))
        t.add_row(escape(d.device_id), current, str(d.done), str(d.failed), str(d.left), _eta(d.eta_s))
    if not progress.devices:
        t.add_row("(no jobs yet)", "", "0", "0", "0", NO_ESTIMATE)
    t.add_section()
    t.add_row("total", "", str(progress.done), str(progress.failed), str(progress.left), _eta(progress.eta_s),
              style="bold")
    return t


class LiveProgress:
    """``with LiveProgress(db, run_id, console): run_farm(...)``: a live table on a terminal, nothing elsewhere."""

    def __init__(self, db: Database, run_id: str, console: Console, interval_s: float = 0.5) -> None:
        self.db, self.run_id, self.console, self.interval_s = db, run_id, console, interval_s
        self.skipped_ticks = 0  # polls that failed and were skipped
        self.last: Optional[RunProgress] = None  # the latest snapshot shown
        self._live: Any = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    @property
    def active(self) -> bool:
        return self._live is not None

    def _tick(self) -> None:
        try:
            progress = snapshot(self.db, self.run_id)
            self._live.update(render(progress), refresh=True)
            self.last = progress
        except Exception:  # noqa: BLE001 - a failed poll (database busy, connection lost) skips this tick
            self.skipped_ticks += 1

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._tick()

    def __enter__(self) -> LiveProgress:
        if not self.console.is_terminal:
            return self
        from rich.live import Live
        from rich.text import Text

        self._live = Live(Text(f"farm run {self.run_id}: starting"), console=self.console, auto_refresh=False,
                          transient=False)
        self._live.start(refresh=True)
        self._tick()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name=f"edgeprobe-farm-progress-{self.run_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 4 * self.interval_s))
            self._thread = None
        try:
            self._tick()  # the final counts stay on screen
        finally:
            self._live.stop()
            self._live = None


__all__ = ["DeviceProgress", "RunProgress", "snapshot", "render", "duration", "LiveProgress"]
