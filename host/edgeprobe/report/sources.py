"""The report's sources read into plain data: farm runs and ``--json`` record files.

Sources are farm run ids (read from the farm database: ``jobs.results`` rows, each job's stored
BenchResult, the ``devices`` table, the history of each cell across runs) and ``--json`` record
files of ``bench`` (a BenchResult), ``sweep`` (a sweep table) and ``split`` (a SplitPlan).
``collect`` reads them into a ``ReportData`` of ``Cell``s (one per model × recipe × backend ×
format × device of a source, each with its ``Launch``es), the runs, sweeps, plans and devices, and
each run cell's ``HistoryView``: its history across farm runs, change points and this run's verdict
against the history baseline. Nothing here renders HTML; the database, record and history modules
are imported when a source needs them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from edgeprobe.errors import ResultError, UsageError

SWEEP_READS_UP_TO = 1  # edgeprobe.compress.sweep.SWEEP_SCHEMA_VERSION (that module imports torch)
DEFAULT_BASELINE_RUNS = 5  # baseline = median of the last k good runs before this one ...
DEFAULT_MIN_BASELINE_RUNS = 3  # ... and at least this many of them, else "no baseline"
DEFAULT_FLOOR_PERCENT = 5.0  # |change| below this is SAME (ExecuTorch's CUDA gate uses 5 %)


# ---------------------------------------------------------------- the data


@dataclass(frozen=True)
class Launch:
    """One launch (one runner process) of a cell: the database row's numbers and its record."""

    launch: int
    status: str
    p50_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    peak_rss_delta_bytes: Optional[int] = None
    key: Optional[str] = None
    error: Optional[str] = None
    fault_class: Optional[str] = None
    record: Any = None  # BenchResult, or None (failed job, or unreadable record: record_error)
    record_error: Optional[str] = None

    @property
    def samples_ms(self) -> list[float]:
        timing = self.record.run.timing if self.record is not None else None
        return [ns / 1e6 for ns in timing.iteration_ns] if timing else []


@dataclass(frozen=True)
class Cell:
    """One (model, recipe, backend, format, device) of a source (a farm run or a record file)."""

    source: str
    source_kind: str  # run | record
    model: str
    recipe: str
    backend: str
    format: str
    device: str
    launches: tuple[Launch, ...]

    @property
    def ok_launches(self) -> list[Launch]:
        return [x for x in self.launches if x.status == "ok" and x.p50_ms is not None]

    @property
    def p50_ms(self) -> Optional[float]:
        """Median over launches of each launch's p50 (the launch is the unit of replication)."""
        vals = [x.p50_ms for x in self.ok_launches]
        return statistics.median(vals) if vals else None

    @property
    def p90_ms(self) -> Optional[float]:
        vals = [x.p90_ms for x in self.ok_launches if x.p90_ms is not None]
        return statistics.median(vals) if vals else None

    @property
    def peak_rss_delta_bytes(self) -> Optional[float]:
        vals = [x.peak_rss_delta_bytes for x in self.ok_launches if x.peak_rss_delta_bytes is not None]
        return statistics.median(vals) if vals else None

    @property
    def label(self) -> str:
        return f"{self.model} · {self.recipe}"

    @property
    def variant(self) -> str:
        return f"{self.backend}/{self.format}"


@dataclass(frozen=True)
class HistoryView:
    """A cell's history across farm runs, its change points, and this run's verdict against it."""

    points: tuple[Any, ...] = ()  # HistoryPoint(run_id, created_utc, value, runner_version, os)
    change_points: tuple[int, ...] = ()
    baseline_ms: Optional[float] = None
    baseline_runs: tuple[str, ...] = ()
    verdict: Optional[str] = None  # SLOWER | FASTER | SAME; None: no baseline
    change_percent: Optional[float] = None
    reason: Optional[str] = None  # why there is no baseline / no history


@dataclass
class ReportData:
    cells: list[Cell] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # jobs.runs rows of the runs shown
    sweeps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (file name, sweep JSON)
    plans: list[tuple[str, Any]] = field(default_factory=list)  # (file name, SplitPlan)
    devices: list[Any] = field(default_factory=list)  # fleet.DeviceHealth of the devices shown
    history: dict[tuple[str, str, str, str, str, str], HistoryView] = field(default_factory=dict)
    history_reason: Optional[str] = None  # why there is no history section (no database, no module)
    db_url: Optional[str] = None
    baseline_runs: int = DEFAULT_BASELINE_RUNS
    min_baseline_runs: int = DEFAULT_MIN_BASELINE_RUNS
    floor_percent: float = DEFAULT_FLOOR_PERCENT


def _cell_key(c: Cell) -> tuple[str, str, str, str, str, str]:
    return (c.source, c.model, c.recipe, c.backend, c.format, c.device)


# ---------------------------------------------------------------- collecting


def _kind_of(data: Any) -> str:
    if isinstance(data, dict):
        if "manifest" in data and "run" in data:
            return "bench"
        if "rows" in data and "quality" in data:
            return "sweep"
        if "candidates" in data and "policy" in data:
            return "split"
    return "unknown"


def _bench_cell(name: str, record: Any) -> Cell:
    stats = record.stats
    memory = record.run.memory
    launch = Launch(0, "ok" if record.ok else (record.run.error.code if record.run.error else record.run.status),
                    p50_ms=stats.p50_ms if stats else None, p90_ms=stats.p90_ms if stats else None,
                    mean_ms=stats.mean_ms if stats else None,
                    peak_rss_delta_bytes=memory.peak_rss_delta_bytes if memory else None,
                    error=record.run.error.message if record.run.error else None, record=record)
    m = record.manifest
    return Cell(name, "record", record.model_ref or m.model_ref, m.recipe, m.backend, m.format, record.device.id,
                (launch,))


def _load_file(path: Path, data: ReportData) -> None:
    from edgeprobe.serde import parse_json, read_text_file

    raw = parse_json(read_text_file(path, "record"), f"the record {path}")
    kind = _kind_of(raw)
    if kind == "bench":
        from edgeprobe.results import BenchResult

        data.cells.append(_bench_cell(path.name, BenchResult.from_dict(raw)))
    elif kind == "sweep":
        version = raw.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version > SWEEP_READS_UP_TO:
            raise ResultError(f"the sweep {path} has schema_version {str(version)[:20]!r}; this edgeprobe reads "
                              f"sweeps up to version {SWEEP_READS_UP_TO}: upgrade edgeprobe")
        if not isinstance(raw["rows"], list) or not all(isinstance(r, dict) for r in raw["rows"]):
            raise ResultError(f"the sweep {path}: rows is not a list of objects")
        data.sweeps.append((path.name, raw))
    elif kind == "split":
        from edgeprobe.split.record import SplitPlan

        data.plans.append((path.name, SplitPlan.from_dict(raw)))
    else:
        raise UsageError(f"{path} is not a record of bench, sweep or split (--json): it has neither "
                         "manifest+run, rows+quality nor candidates+policy")


def _run_cells(db: Any, run_id: str) -> list[Cell]:
    from edgeprobe.farm import jobs
    from edgeprobe.results import BenchResult

    grouped: dict[tuple[str, str, str, str, str], list[Launch]] = {}
    for row in jobs.results(db, run_id):
        record, record_error = None, None
        if row["state"] == "done":
            raw = jobs.record(db, row["key"])
            if raw is not None:
                try:
                    record = BenchResult.from_dict(raw)
                except ResultError as exc:
                    record_error = str(exc)
        key = (row["model"], row["recipe"], row["backend"], row["format"], row["device"])
        grouped.setdefault(key, []).append(Launch(
            row["launch"], row["status"], row["p50_ms"], row["p90_ms"], row["mean_ms"], row["peak_rss_delta_bytes"],
            key=row["key"], error=row["error"], fault_class=row["fault_class"], record=record,
            record_error=record_error))
    return [Cell(run_id, "run", *k, tuple(sorted(v, key=lambda x: x.launch))) for k, v in grouped.items()]


def _history(db: Any, data: ReportData) -> None:
    try:
        from edgeprobe.gate.history import baseline_of, change_points, history
    except ImportError as exc:
        data.history_reason = f"unavailable: edgeprobe.gate.history cannot be imported ({exc})"
        return
    seen: dict[tuple[str, str, str, str, str], tuple[tuple[Any, ...], tuple[int, ...]]] = {}
    for c in data.cells:
        if c.source_kind != "run":
            continue
        hk = (c.model, c.recipe, c.backend, c.format, c.device)
        if hk not in seen:
            points = tuple(history(db, model=c.model, recipe=c.recipe, device_id=c.device, metric="p50_ms",
                                   backend=c.backend, format=c.format))
            seen[hk] = (points, tuple(change_points([p.value for p in points])))
        points, cps = seen[hk]
        data.history[_cell_key(c)] = _verdict(c, points, cps, data, baseline_of)


def _verdict(c: Cell, points: Sequence[Any], cps: tuple[int, ...], data: ReportData, baseline_of: Any) -> HistoryView:
    """This run's p50 against the history baseline (``gate.history.baseline_of``: the median of the
    last ``baseline_runs`` good runs before this one, at least ``min_baseline_runs``) of the same OS
    and runner version, with a practical floor: the history baseline of issue 14 (item 3)."""
    mine = next((i for i, p in enumerate(points) if p.run_id == c.source), None)
    me = points[mine] if mine is not None else None
    before = [p for p in (points[:mine] if mine is not None else points) if p.value is not None
              and (me is None or ((me.os is None or p.os == me.os)
                                  and (me.runner_version is None or p.runner_version == me.runner_version)))]
    view = dict(points=tuple(points), change_points=cps)
    if c.p50_ms is None:
        return HistoryView(**view, reason="no measured p50 in this run")
    baseline = baseline_of([p.value for p in before], k=data.baseline_runs, min_count=data.min_baseline_runs)
    if baseline is None:
        same = f" with the same OS ({me.os}) and runner ({me.runner_version})" if me is not None else ""
        return HistoryView(**view, reason=f"no baseline: {len(before)} earlier good run(s){same} in the history, "
                                          f"{data.min_baseline_runs} needed")
    prior = before[-data.baseline_runs:]
    change = (c.p50_ms - baseline) / baseline * 100.0 if baseline else math.inf
    verdict = "SAME" if abs(change) < data.floor_percent else ("SLOWER" if change > 0 else "FASTER")
    return HistoryView(**view, baseline_ms=baseline, baseline_runs=tuple(p.run_id for p in prior), verdict=verdict,
                       change_percent=change)


def collect(items: Iterable[Union[str, Path]], *, db_url: Optional[str] = None, db: Any = None,
            baseline_runs: int = DEFAULT_BASELINE_RUNS, min_baseline_runs: int = DEFAULT_MIN_BASELINE_RUNS,
            floor_percent: float = DEFAULT_FLOOR_PERCENT) -> ReportData:
    """Read every source: an existing file is a ``--json`` record (bench, sweep or split), anything
    else a farm run id (``latest``: the newest run) in the database at ``db_url``."""
    if baseline_runs < 1 or min_baseline_runs < 1 or floor_percent < 0:
        raise UsageError("baseline runs and minimum baseline runs must be >= 1, the floor >= 0 %")
    data = ReportData(baseline_runs=baseline_runs, min_baseline_runs=min_baseline_runs, floor_percent=floor_percent)
    items = [str(i) for i in items]
    if not items:
        raise UsageError("nothing to report: give a farm run id or record files (bench, sweep, split --json)")
    run_ids = []
    for item in items:
        p = Path(item)
        if p.is_file():
            _load_file(p, data)
        elif p.exists() or "/" in item or item.endswith(".json"):
            raise UsageError(f"{item} is not a record file (and not a farm run id)")
        else:
            run_ids.append(item)
    if run_ids or db is not None or db_url:
        if db is None:
            from edgeprobe.farm.db.engine import open_db

            db = open_db(db_url)
        data.db_url = str(db.url)
    if run_ids:
        from edgeprobe.farm import fleet, jobs

        known = {r["id"]: r for r in jobs.runs(db, limit=1_000_000)}
        for run_id in run_ids:
            if run_id == "latest" and known:
                run_id = next(iter(known))
            if run_id not in known:
                latest = ", ".join(list(known)[:5]) or "none"
                raise UsageError(f"{run_id} is neither a record file nor a farm run in {db.url} (latest runs: "
                                 f"{latest}); pass --db for another database")
            if any(r["id"] == run_id for r in data.runs):
                continue
            data.runs.append(known[run_id])
            data.cells.extend(_run_cells(db, run_id))
        shown = {c.device for c in data.cells}
        data.devices = [d for d in fleet.all_devices(db) if d.id in shown]
        _history(db, data)
    elif data.history_reason is None:
        data.history_reason = "no farm run given: history comes from the farm database (edgeprobe report RUN_ID)"
    return data
