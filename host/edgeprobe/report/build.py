"""Collect report sources and render them as one self-contained HTML file.

Sources are farm run ids (read from the farm database: ``jobs.results`` rows, each job's stored
BenchResult, the ``devices`` table, the history of each cell across runs) and ``--json`` record
files of ``bench`` (a BenchResult), ``sweep`` (a sweep table) and ``split`` (a SplitPlan).

Every number on the page is either measured (the runner's samples, the database's result rows,
fidelity scored on the host) or labelled a prediction (a split plan's costs); a meter that was not
available is printed as ``unavailable: <reason>``, never as 0. Everything that comes from a record
is HTML-escaped; plotly's JSON embedding escapes ``<``/``>``/``/`` in figure data. plotly's
JavaScript is inlined once from its Python package: the page makes no network request.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from edgeprobe.errors import ResultError, UsageError

SECTIONS = (("matrix", "Matrix: devices × models × recipes"), ("distributions", "Per-iteration latency distributions"),
            ("history", "History across farm runs"), ("sweep", "Compression sweep"), ("split", "Split plan"),
            ("devices", "Devices: environment and hygiene"))
SWEEP_READS_UP_TO = 1  # edgeprobe.compress.sweep.SWEEP_SCHEMA_VERSION (that module imports torch)
DEFAULT_BASELINE_RUNS = 5  # baseline = median of the last k good runs before this one ...
DEFAULT_MIN_BASELINE_RUNS = 3  # ... and at least this many of them, else "no baseline"
DEFAULT_FLOOR_PERCENT = 5.0  # |change| below this is SAME (ExecuTorch's CUDA gate uses 5 %)
VERDICT_COLOURS = {"SLOWER": "#f4c7c3", "FASTER": "#c8e6c9", "SAME": "#e8eaed"}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


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


# ---------------------------------------------------------------- formatting


def _num(v: Optional[float], digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}g}"


def _ms(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.4g} ms"


def _mib(v: Optional[float]) -> str:
    return "—" if v is None else f"{v / 2**20:.2f} MiB"


def _utc(t: Any) -> str:
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "—" if t is None else str(t)


def _iso(t: Any) -> Any:
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat()
    return t


def _unavailable(reason: Optional[str]) -> str:
    return f'<span class="unavailable">unavailable: {esc(reason or "no reason given")}</span>'


def _not_reported(v: Any, fmt=str) -> str:
    return '<span class="unavailable">not reported</span>' if v is None else esc(fmt(v))


def _memory_text(c: Cell) -> str:
    """Peak memory of the cell, or why it is unavailable (never 0)."""
    if c.peak_rss_delta_bytes is not None:
        return esc(_mib(c.peak_rss_delta_bytes))
    reasons = []
    for x in c.launches:
        mem = x.record.run.memory if x.record is not None else None
        if x.record is None:
            reasons.append(x.record_error or f"no record ({x.status})")
        elif mem is None:
            reasons.append("the runner reported no memory block")
        else:
            reasons.append(f"the runner could not read peak memory ({mem.source})")
    return _unavailable("; ".join(dict.fromkeys(reasons)))


def energy_text(records: Sequence[Any]) -> str:
    """Energy per inference of the records (measured by their meter), or ``unavailable: reason``."""
    if not records:
        return _unavailable("no record")
    values, reasons = [], []
    for r in records:
        e = r.run.energy
        if e is None:
            reasons.append("the runner reported no energy block")
            continue
        iterations = len(r.run.timing.iteration_ns) if r.run.timing else 0
        est = e.estimate(iterations) if iterations else None
        if est is None:
            odpm = f"; ODPM: {e.odpm.reason}" if e.odpm is not None and not e.odpm.available and e.odpm.reason else ""
            reasons.append((e.reason or "no energy meter") + odpm)
        elif est.per_inference_j is None:
            reasons.append(est.reason or "no idle baseline: the net energy per inference is unknown")
        else:
            values.append(est)
    if values:
        j = statistics.median(v.per_inference_j for v in values)
        unc = [v.uncertainty_j for v in values if v.uncertainty_j is not None]
        pm = f" ± {statistics.median(unc) * 1e3:.3g}" if unc else ""
        return esc(f"{j * 1e3:.4g}{pm} mJ/inference ({values[0].meter or values[0].method})")
    return _unavailable("; ".join(dict.fromkeys(reasons)))


def thermal_text(record: Any) -> str:
    t = record.run.thermal if record is not None else None
    if t is None:
        return _unavailable("the runner reported no thermal block")
    if not t.available:
        return _unavailable(t.reason)
    zones = sorted(set(t.before_c) | set(t.after_c))
    return esc(", ".join(f"{z}: {t.before_c.get(z, '?')}→{t.after_c.get(z, '?')} °C" for z in zones) or "no zones")


# ---------------------------------------------------------------- plots


class _Plots:
    """Figures rendered by plotly with stable div ids; plotly's JSON embedding escapes '<' '>' '/'."""

    def __init__(self) -> None:
        self.count = 0

    def html(self, fig: Any, div_id: str, caption: str) -> str:
        import plotly.io as pio

        self.count += 1
        fig.update_layout(template="plotly_white", font=dict(family="sans-serif"))
        fig.update_layout(margin={**dict(l=60, r=20, t=50, b=60), **(fig.layout.margin.to_plotly_json() or {})})
        body = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True})
        return f'<figure class="plot">{body}<figcaption>{esc(caption)}</figcaption></figure>'


def _dist_figures(data: ReportData, plots: _Plots) -> str:
    import plotly.graph_objects as go

    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in data.cells:
        groups.setdefault((c.source, c.device), []).append(c)
    parts = []
    ordered = sorted(groups.items(), key=lambda kv: kv[1][0].source_kind != "run")
    for n, ((source, device), cells) in enumerate(ordered):
        fig = go.Figure()
        launches = sorted({x.launch for c in cells for x in c.launches if x.samples_ms})
        for launch in launches:
            xs, ys = [], []
            for c in cells:
                for x in c.launches:
                    if x.launch == launch:
                        xs += [esc(f"{c.label} ({c.variant})")] * len(x.samples_ms)
                        ys += x.samples_ms
            fig.add_trace(go.Box(x=xs, y=ys, name=f"launch {launch}", boxpoints="all", jitter=0.4, pointpos=0,
                                 hovertemplate="%{x}<br>%{y:.4g} ms (measured)<extra>%{fullData.name}</extra>"))
        if not launches:
            parts.append(f'<p class="note">{esc(source)} on {esc(device)}: no per-iteration samples '
                         "(no launch measured)</p>")
            continue
        fig.update_layout(boxmode="group", title=esc(f"{source} on {device}"), height=420,
                          yaxis_title="measured per-iteration latency (ms)", legend_title="launch")
        parts.append(plots.html(fig, f"dist-{n}", f"raw per-iteration samples of every launch, {source} on {device} "
                                                  "(measured)"))
    return "".join(parts) or '<p class="note">no measured cells</p>'


def _history_figures(data: ReportData, plots: _Plots) -> str:
    import plotly.graph_objects as go

    if data.history_reason and not data.history:
        return f'<p class="note">{esc(data.history_reason)}</p>'
    parts, done = [], set()
    for c in data.cells:
        view = data.history.get(_cell_key(c))
        hk = (c.model, c.recipe, c.backend, c.format, c.device)
        if view is None or hk in done:
            continue
        done.add(hk)
        div = f"hist-{len(done) - 1}"
        pts = [p for p in view.points if p.value is not None]
        if not pts:
            parts.append(f'<p class="note">{esc(c.label)} on {esc(c.device)}: no history</p>')
            continue
        x = [_iso(p.created_utc) for p in pts]
        text = [esc(f"run {p.run_id} · runner {p.runner_version or '?'} · {p.os or '?'}") for p in pts]
        fig = go.Figure(go.Scatter(x=x, y=[p.value for p in pts], mode="lines+markers", name="p50 per run",
                                   text=text, hovertemplate="%{text}<br>%{y:.4g} ms (measured)<extra></extra>"))
        cps = [i for i in view.change_points if 0 <= i < len(pts)]
        if cps:
            fig.add_trace(go.Scatter(x=[x[i] for i in cps], y=[pts[i].value for i in cps], mode="markers",
                                     name="change point (new level starts)",
                                     marker=dict(symbol="x", size=14, color="#d93025", line=dict(width=2)),
                                     hovertemplate="change point: a new level starts<br>%{y:.4g} ms<extra></extra>"))
            for i in cps:
                fig.add_vline(x=x[i], line=dict(color="#d93025", dash="dot", width=1))
        if view.baseline_ms is not None:
            fig.add_hline(y=view.baseline_ms, line=dict(color="#5f6368", dash="dash"),
                          annotation_text=f"baseline {view.baseline_ms:.4g} ms", annotation_position="bottom right")
        shown = [i for i, p in enumerate(pts) if any(p.run_id == r["id"] for r in data.runs)]
        if shown:
            fig.add_trace(go.Scatter(x=[x[i] for i in shown], y=[pts[i].value for i in shown], mode="markers",
                                     name="run in this report", marker=dict(size=12, color="rgba(0,0,0,0)",
                                                                            line=dict(width=2, color="#1a73e8")),
                                     hoverinfo="skip"))
        fig.update_layout(title=esc(f"{c.model} · {c.recipe} on {c.device}"), height=360, showlegend=True,
                          legend=dict(orientation="h", yanchor="top", y=-0.3),
                          yaxis_title="measured p50 (ms)", xaxis_title="run (UTC)")
        parts.append(plots.html(fig, div, f"history of {c.label} on {c.device}: one point per farm run; "
                                          f"{len(cps)} change point(s)"))
    return ('<div class="grid">' + "".join(parts) + "</div>") if parts else '<p class="note">no history</p>'


def _sweep_quality(v: Any) -> Optional[float]:
    if v in ("inf", "-inf"):
        return math.inf if v == "inf" else -math.inf
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _sweep_html(data: ReportData, plots: _Plots) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not data.sweeps:
        return '<p class="note">no sweep record given (edgeprobe sweep … --json PATH)</p>'
    parts = []
    for n, (name, sw) in enumerate(data.sweeps):
        quality = sw.get("quality") if sw.get("quality") in ("accuracy", "sqnr_db") else "sqnr_db"
        qlabel = "accuracy (measured on the eval set)" if quality == "accuracy" else "SQNR vs fp32 (dB, measured)"
        rows = sw["rows"]
        ok = [r for r in rows if r.get("status") == "ok" and isinstance(r.get("latency_p50_ms"), (int, float))]
        finite = [q for q in (_sweep_quality(r.get(quality)) for r in ok) if q is not None and math.isfinite(q)]
        cap = (max(finite) + 10.0) if finite else 100.0
        fig = make_subplots(rows=1, cols=2, subplot_titles=(esc(qlabel), "artifact size (KiB, measured)"))
        for front in (False, True):
            sel = [r for r in ok if bool(r.get("pareto")) == front]
            qs = [_sweep_quality(r.get(quality)) for r in sel]
            qs = [cap if q is not None and math.isinf(q) else q for q in qs]
            style = dict(mode="markers+text", textposition="top center", cliponaxis=False,
                         marker=dict(symbol="star" if front else "circle", size=16 if front else 9,
                                     color="#d93025" if front else "#1a73e8"))
            name = "Pareto front" if front else "dominated"
            labels = [esc(r.get("recipe")) for r in sel]
            fig.add_trace(go.Scatter(x=[r["latency_p50_ms"] for r in sel], y=qs, text=labels, name=name,
                                     legendgroup=name, **style,
                                     hovertemplate="%{text}<br>p50 %{x:.4g} ms<br>%{y:.4g}<extra></extra>"), 1, 1)
            fig.add_trace(go.Scatter(x=[r["latency_p50_ms"] for r in sel],
                                     y=[(r.get("artifact_size_bytes") or 0) / 1024 if r.get("artifact_size_bytes")
                                        is not None else None for r in sel], text=labels, name=name,
                                     legendgroup=name, showlegend=False, **style,
                                     hovertemplate="%{text}<br>p50 %{x:.4g} ms<br>%{y:.4g} KiB<extra></extra>"), 1, 2)
        fig.update_xaxes(title_text=esc(f"measured p50 latency (ms) on {sw.get('device')}"))
        fig.update_layout(title=esc(f"{sw.get('model_ref')}: recipes measured on {sw.get('device')}"), height=460,
                          margin=dict(t=90, r=60))
        inf_note = (" An infinite SQNR (identical outputs) is drawn at the top of the axis." if
                    any(_sweep_quality(r.get(quality)) == math.inf for r in ok) else "")
        parts.append(plots.html(fig, f"sweep-{n}", f"Pareto front over (p50 latency, artifact size, {quality}); "
                                                   f"red stars are on the front.{inf_note}"))
        parts.append(_sweep_table(sw, rows))
    return "".join(parts)


def _sweep_table(sw: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    def q(v: Any) -> str:
        f = _sweep_quality(v)
        return "∞ (identical)" if f == math.inf else _num(f)

    head = ("recipe", "status", "measured p50 (ms)", "measured p90 (ms)", "CV %", "artifact (KiB, measured)",
            "packed storage (KiB, computed)", "measured peak memory", "params (nonzero)", "SQNR dB", "top-1 agree",
            "accuracy", "Pareto", "notes")
    out = [f'<p>{esc(sw.get("model_ref"))} on {esc(sw.get("device"))}, dataset {esc(sw.get("dataset"))} '
           f'({esc(sw.get("eval_samples"))} samples), created {esc(sw.get("created_utc"))}</p>',
           '<table class="data sweep"><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        size, packed = r.get("artifact_size_bytes"), r.get("storage_bytes_if_packed")
        cells = (r.get("recipe"), r.get("status") if r.get("status") == "ok" else f"error: {r.get('error')}",
                 _num(r.get("latency_p50_ms")), _num(r.get("latency_p90_ms")), _num(r.get("latency_cv_percent"), 3),
                 _num(size / 1024 if isinstance(size, (int, float)) else None),
                 _num(packed / 1024 if isinstance(packed, (int, float)) else None),
                 _mib(r.get("peak_memory_bytes")) if isinstance(r.get("peak_memory_bytes"), (int, float)) else "—",
                 f"{r.get('params')} ({r.get('nonzero_params')})", q(r.get("sqnr_db")), _num(r.get("top1_agreement")),
                 _num(r.get("accuracy")), "★" if r.get("pareto") else "",
                 "; ".join(str(x) for x in (r.get("notes") or [])) + (f" unstable: {r['unstable_reason']}"
                                                                      if r.get("unstable_reason") else ""))
        out.append("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in cells) + "</tr>")
    return '<div class="scroll">' + "".join(out) + "</table></div>"


def _split_html(data: ReportData, plots: _Plots) -> str:
    import plotly.graph_objects as go

    if not data.plans:
        return '<p class="note">no split plan given (edgeprobe split … --json PATH)</p>'
    parts = []
    for n, (name, plan) in enumerate(data.plans):
        cands = list(plan.candidates)
        parts.append(f'<h3>{esc(plan.model_ref)} on {esc(plan.device)} ({esc(name)})</h3>'
                     f'<p>chosen: <b>{esc(plan.chosen.label)}</b> · objective {esc(plan.objective)} · encoding '
                     f'{esc(plan.encoding)} · server {esc(plan.server or "none (server costs timed on this host)")} · '
                     f'link used: {esc(plan.network_source)} (uplink {plan.uplink_bps / 1e6:.4g} Mbit/s, downlink '
                     f'{plan.downlink_bps / 1e6:.4g} Mbit/s, RTT {plan.rtt_ms:.4g} ms)</p>'
                     '<p class="note">Columns marked <i>predicted</i> are the planner\'s predictions from measured '
                     "per-operator costs, not measurements; <i>measured</i> columns were timed.</p>")
        fig = go.Figure()
        labels = [esc(c.label) for c in cands]
        for attr, label in (("predicted_device_ms", "device"), ("predicted_uplink_ms", "uplink"),
                            ("predicted_server_ms", "server"), ("predicted_downlink_ms", "downlink"),
                            ("predicted_rtt_ms", "RTT"), ("predicted_overhead_ms", "software overhead")):
            fig.add_trace(go.Bar(x=labels, y=[getattr(c, attr) for c in cands], name=f"{label} (predicted)"))
        for attr, label, sym in (("measured_e2e_p50_ms", "measured end to end p50", "diamond"),
                                 ("measured_head_ms", "measured head p50 (confirm)", "circle")):
            ys = [getattr(c, attr) for c in cands]
            if any(y is not None for y in ys):
                fig.add_trace(go.Scatter(x=labels, y=ys, mode="markers", name=label,
                                         marker=dict(symbol=sym, size=11, color="#202124")))
        fig.update_layout(barmode="stack", title=esc(f"split candidates of {plan.model_ref}"), height=430,
                          yaxis_title="ms (bars: predicted; markers: measured)", yaxis_type="log")
        parts.append(plots.html(fig, f"split-{n}", "predicted latency per candidate cut, by component (a "
                                                   "prediction); measured points where the plan has them"))
        head = ("candidate", "kind", "device nodes", "bytes up", "predicted device (ms)", "predicted uplink (ms)",
                "predicted server (ms)", "predicted downlink (ms)", "predicted RTT (ms)", "predicted total (ms)",
                "measured head p50 (ms)", "confirmed total (ms, predicted with the measured head)",
                "measured e2e p50 (ms)", "prediction error", "SQNR dB (measured)", "error")
        rows = ['<table class="data split"><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
        for c in cands:
            cls = ' class="chosen"' if c.label == plan.chosen.label else ""
            vals = (c.label, c.kind, c.device_nodes, c.bytes_up, _num(c.predicted_device_ms), _num(c.predicted_uplink_ms),
                    _num(c.predicted_server_ms), _num(c.predicted_downlink_ms), _num(c.predicted_rtt_ms),
                    _num(c.predicted_total_ms),
                    _num(c.measured_head_ms) if c.measured_head_ms is not None else (c.confirm_error or "not timed"),
                    _num(c.confirmed_total_ms), _num(c.measured_e2e_p50_ms) if c.measured_e2e_p50_ms is not None
                    else "not verified", "—" if c.prediction_error is None else f"{c.prediction_error * 100:+.1f} %",
                    _num(c.sqnr_db), c.error or "")
            rows.append(f"<tr{cls}>" + "".join(f"<td>{esc(v)}</td>" for v in vals) + "</tr>")
        parts.append('<div class="scroll">' + "".join(rows) + "</table></div>")
        pol = ['<h4>Policy (from predictions): the decision by uplink bandwidth</h4><table class="data policy">'
               "<tr><th>uplink from (Mbit/s)</th><th>decision</th></tr>"]
        pol += [f"<tr><td>{bw / 1e6:.4g}</td><td>{esc(label)}</td></tr>" for bw, label in plan.policy]
        parts.append("".join(pol) + "</table>")
        extra = [("regret (chosen measured / best measured)", _num(plan.regret)),
                 ("best measured", plan.best_measured or "not verified"),
                 ("median |prediction error|", "—" if plan.median_abs_prediction_error is None
                  else f"{plan.median_abs_prediction_error * 100:.1f} %"),
                 ("per-message overhead (measured)", "not measured (no server)" if plan.per_message_overhead_bytes
                  is None else f"{plan.per_message_overhead_bytes} B"),
                 ("request overhead (measured)", "not measured (no server)" if plan.request_overhead_ms is None
                  else _ms(plan.request_overhead_ms)),
                 *((f"cost source: {k}", v) for k, v in plan.cost_sources.items()),
                 *(("note", x) for x in plan.notes)]
        parts.append('<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in extra)
                     + "</table>")
    return "".join(parts)


# ---------------------------------------------------------------- matrix and devices


def _cell_td(c: Cell, view: Optional[HistoryView], data: ReportData) -> str:
    p50s = [x.p50_ms for x in c.launches]
    attrs = {"data-source": c.source, "data-model": c.model, "data-recipe": c.recipe, "data-backend": c.backend,
             "data-format": c.format, "data-device": c.device,
             "data-p50-ms": "" if c.p50_ms is None else repr(c.p50_ms),
             "data-p90-ms": "" if c.p90_ms is None else repr(c.p90_ms),
             "data-peak-rss-delta-bytes": "" if c.peak_rss_delta_bytes is None else repr(c.peak_rss_delta_bytes),
             "data-launch-p50-ms": json.dumps(p50s), "data-launch-status": json.dumps([x.status for x in c.launches]),
             "data-verdict": (view.verdict if view and view.verdict else "none"),
             "data-baseline-p50-ms": "" if view is None or view.baseline_ms is None else repr(view.baseline_ms)}
    tip = [f"{c.model} · {c.recipe} ({c.variant}) on {c.device}, {c.source}",
           *(f"launch {x.launch}: {x.status}, p50 {_num(x.p50_ms, 6)} ms, p90 {_num(x.p90_ms, 6)} ms, "
             f"peak memory {'—' if x.peak_rss_delta_bytes is None else x.peak_rss_delta_bytes} B" for x in c.launches),
           f"cell p50 (median of launches): {_num(c.p50_ms, 6)} ms"]
    cls = ["cell"]
    if view is not None and view.verdict:
        cls.append(f"verdict-{view.verdict.lower()}")
        verdict = (f'<div class="verdict">{esc(view.verdict)} {view.change_percent:+.1f} % vs baseline '
                   f'{esc(_ms(view.baseline_ms))}</div>')
        tip.append(f"baseline {_num(view.baseline_ms, 6)} ms = median of runs {', '.join(view.baseline_runs)}; "
                   f"{view.verdict} ({view.change_percent:+.1f} %, floor ±{data.floor_percent:g} %)")
    else:
        reason = view.reason if view is not None else ("no baseline: a record file has no history" if
                                                       c.source_kind == "record" else data.history_reason)
        verdict = f'<div class="verdict none">no baseline</div>'
        tip.append(reason or "no baseline")
    failed = [x for x in c.launches if x.status != "ok"]
    if not c.ok_launches:
        cls.append("failed")
        body = ('<div class="failed">' + "; ".join(esc(f"launch {x.launch}: {x.fault_class or x.status}: "
                                                       f"{x.error or x.record_error or ''}") for x in failed) + "</div>")
    else:
        records = [x.record for x in c.ok_launches if x.record is not None]
        body = (f'<div class="p50">{esc(_ms(c.p50_ms))}</div>'
                f'<div class="sub">p90 {esc(_ms(c.p90_ms))} · {len(c.ok_launches)}/{len(c.launches)} launches</div>'
                f'<div class="mem">memory {_memory_text(c)}</div>'
                f'<div class="energy">energy {energy_text(records)}</div>')
        if failed:
            body += f'<div class="failed">{len(failed)} launch(es) failed</div>'
    attr_text = " ".join(f'{k}="{esc(v)}"' for k, v in attrs.items())
    return (f'<td class="{" ".join(cls)}" {attr_text} title="{esc(chr(10).join(t for t in tip if t))}">'
            f"{body}{verdict}</td>")


def _matrix_html(data: ReportData) -> str:
    if not data.cells:
        return '<p class="note">no measured cells: give a farm run id or bench records</p>'
    sources: dict[str, list[Cell]] = {}
    for c in data.cells:
        sources.setdefault(c.source, []).append(c)
    parts = ['<p class="legend">Each cell: measured p50 latency (median over launches of each launch\'s p50), '
             "p90, peak memory above the runner's baseline, energy per inference; colour: verdict of this run's p50 "
             f"against the history baseline (median of the last {data.baseline_runs} earlier runs, at least "
             f"{data.min_baseline_runs}; floor ±{data.floor_percent:g} %): "
             '<span class="chip verdict-slower">SLOWER</span> <span class="chip verdict-faster">FASTER</span> '
             '<span class="chip verdict-same">SAME</span> <span class="chip">no baseline</span>. '
             "Hover a cell for every launch's numbers from the database.</p>"]
    for source, cells in sorted(sources.items(), key=lambda kv: kv[1][0].source_kind != "run"):
        devices = sorted({c.device for c in cells})
        rows = sorted({(c.model, c.recipe, c.backend, c.format) for c in cells})
        by = {(c.model, c.recipe, c.backend, c.format, c.device): c for c in cells}
        kind = "farm run" if cells[0].source_kind == "run" else "record"
        t = [f'<h3>{esc(kind)} {esc(source)}</h3><table class="matrix"><tr><th>model</th><th>recipe</th>'
             "<th>backend/format</th>" + "".join(f"<th>{esc(d)}</th>" for d in devices) + "</tr>"]
        for model, recipe, backend, fmt in rows:
            t.append(f"<tr><th>{esc(model)}</th><th>{esc(recipe)}</th><th>{esc(backend)}/{esc(fmt)}</th>")
            for d in devices:
                c = by.get((model, recipe, backend, fmt, d))
                t.append(_cell_td(c, data.history.get(_cell_key(c)), data) if c else
                         '<td class="cell empty">not in this source</td>')
            t.append("</tr>")
        parts.append("".join(t) + "</table>")
    return "".join(parts)


def _runs_html(data: ReportData) -> str:
    if not data.runs:
        return ""
    rows = "".join(f"<tr><td>{esc(r['id'])}</td><td>{esc(r['farm_file'])}</td><td>{esc(_utc(r['created_utc']))}</td>"
                   f"<td>{esc(r['state'])}</td><td>{esc(', '.join(f'{k} {v}' for k, v in r['counts'].items()))}</td>"
                   "</tr>" for r in data.runs)
    return ('<table class="data runs"><tr><th>farm run</th><th>farm file</th><th>created</th><th>state</th>'
            f"<th>jobs</th></tr>{rows}</table>")


def _kv(pairs: Iterable[tuple[str, str]]) -> str:
    """Rows of (label, already-escaped HTML)."""
    return '<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def _devices_html(data: ReportData) -> str:
    ids = sorted({c.device for c in data.cells} | {d.id for d in data.devices})
    if not ids:
        return '<p class="note">no device: no measured cells</p>'
    fleet = {d.id: d for d in data.devices}
    parts = []
    for n, dev in enumerate(ids):
        launches = [(c, x) for c in sorted(data.cells, key=lambda c: c.source_kind != "run") if c.device == dev
                    for x in c.launches if x.record is not None]
        rec = launches[0][1].record if launches else None
        h = fleet.get(dev)
        env = rec.run.environment if rec is not None else None
        env_dict = dict(h.environment) if h is not None and h.environment else (
            {k: getattr(env, k) for k in ("os", "kernel", "machine", "cpu_model", "cores", "hostname")} if env else {})
        pairs = [("device", esc(dev))]
        if rec is not None:
            pairs += [("transport", esc(rec.device.transport)), ("description", esc(rec.device.description)),
                      ("runner", esc(f"{rec.run.runner.flavor} {rec.run.runner.version}, {rec.run.runner.runtime} "
                                     f"{rec.run.runner.runtime_version}") if rec.run.runner else _unavailable("no runner block")),
                      ("host versions", esc(", ".join(f"{k} {v}" for k, v in rec.host_versions.items())))]
        if h is not None:
            status = h.status + (f" until {_utc(h.quarantined_until)}: {h.quarantine_reason}" if h.quarantined_until
                                 else "")
            pairs += [("labels", esc(", ".join(f"{k}={v}" for k, v in h.labels.items()) or "none")),
                      ("farm status", esc(status)), ("failures in a row", esc(h.consecutive_failures)),
                      ("suspect", esc("yes" if h.suspect else "no")), ("last seen", esc(_utc(h.last_seen_utc)))]
        pairs += [(f"environment: {k}", _not_reported(v)) for k, v in env_dict.items()]
        if not env_dict:
            pairs.append(("environment", _unavailable("no record of this device carries an environment block")))
        parts.append(f'<div class="device" id="device-{n}"><h3>{esc(dev)}</h3>{_kv(pairs)}')
        head = ("source", "cell", "launch", "hygiene source", "battery", "charging", "thermal status before/after",
                "thermal zones", "affinity", "fixed performance", "cooldown waited", "CPU load during the run",
                "energy meter", "notes")
        t = ['<table class="data hygiene"><tr>' + "".join(f"<th>{esc(x)}</th>" for x in head) + "</tr>"]
        for c, x in launches:
            ds = x.record.device_state
            if ds is None:
                t.append(f"<tr><td>{esc(c.source)}</td><td>{esc(c.label)}</td><td>{x.launch}</td>"
                         f'<td colspan="{len(head) - 3}">{_unavailable("the record has no device state")}</td></tr>')
                continue
            load = ds.cpu_load
            if load is None:
                load_text = _unavailable("not recorded (older runner)")
            elif not load.available:
                load_text = _unavailable(load.reason)
            else:
                others = ", ".join(f"{p.name} {p.cores:.2g}" for p in load.others[:3])
                load_text = esc(f"busy {_num(load.busy_cores, 3)} of {load.cores} cores, others "
                                f"{_num(load.others_cores, 3)}" + (f" ({others})" if others else ""))
            vals = (esc(c.source), esc(c.label), esc(x.launch), esc(ds.source),
                    _not_reported(ds.battery_level_percent, lambda v: f"{v} %"),
                    _not_reported(ds.charging, lambda v: "yes" if v else "no"),
                    f"{_not_reported(ds.thermal_status)} / {_not_reported(ds.thermal_status_after)}",
                    thermal_text(x.record), esc(",".join(map(str, ds.affinity_cores)) or "not pinned"),
                    esc(ds.fixed_performance), esc(f"{ds.cooldown_waited_s:.3g} s"), load_text,
                    energy_text([x.record]), esc("; ".join(ds.notes)))
            t.append("<tr>" + "".join(f"<td>{v}</td>" for v in vals) + "</tr>")
        parts.append(("".join(t) + "</table>" if launches else '<p class="note">no record of this device</p>')
                     + "</div>")
    return "".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#202124;background:#fafafa}
header{background:#202124;color:#fff;padding:12px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#bdc1c6;font-size:13px}nav{padding:6px 24px;background:#e8eaed;font-size:14px}
nav a{margin-right:16px;color:#1a73e8;text-decoration:none}
section{background:#fff;margin:16px 24px;padding:12px 20px;border:1px solid #dadce0;border-radius:6px}
h2{font-size:18px;margin:4px 0 10px}h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 12px}
th,td{border:1px solid #dadce0;padding:4px 7px;text-align:left;vertical-align:top}th{background:#f1f3f4}
table.matrix td.cell{min-width:190px}td.cell .p50{font-size:16px;font-weight:600}td.cell .sub{color:#5f6368}
td.cell .verdict{margin-top:3px;font-weight:600}td.cell .verdict.none{color:#80868b;font-weight:400}
.verdict-slower{background:#f4c7c3}.verdict-faster{background:#c8e6c9}.verdict-same{background:#e8eaed}
td.failed,.failed{color:#b3261e}td.empty{color:#9aa0a6}.unavailable{color:#8d6e00;font-style:italic}
.chip{padding:1px 6px;border:1px solid #dadce0;border-radius:3px}.note{color:#5f6368;font-size:13px}
.legend{font-size:13px;color:#3c4043}tr.chosen td{background:#e8f0fe;font-weight:600}
table.kv th{width:260px}figure.plot{margin:8px 0;border:1px solid #eee}figcaption{font-size:12px;color:#5f6368;padding:4px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:8px}
.device{border-top:1px solid #eee;padding-top:4px}.scroll{overflow-x:auto}td.cell{max-width:340px}
"""


def render(data: ReportData, *, title: str = "edgeprobe report") -> str:
    """The report as one HTML document (plotly's JavaScript inlined once)."""
    import plotly
    from plotly.offline import get_plotlyjs

    from edgeprobe.versions import __version__

    plots = _Plots()
    bodies = {"matrix": _runs_html(data) + _matrix_html(data), "distributions": _dist_figures(data, plots),
              "history": _history_figures(data, plots), "sweep": _sweep_html(data, plots),
              "split": _split_html(data, plots), "devices": _devices_html(data)}
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    sources = ", ".join([r["id"] for r in data.runs] + sorted({c.source for c in data.cells if c.source_kind == "record"})
                        + [n for n, _ in data.sweeps] + [n for n, _ in data.plans])
    nav = "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{esc(t)}</h2>{bodies[sid]}</section>' for sid, t in SECTIONS)
    db = f" · database {esc(data.db_url)}" if data.db_url else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="generator" content="edgeprobe {esc(__version__)}, plotly {esc(plotly.__version__)}">'
            f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>"
            f"<header><h1>{esc(title)}</h1><p>sources: {esc(sources)}{db} · written {esc(now)} by edgeprobe "
            f"{esc(__version__)}. Every number is measured unless it is labelled a prediction.</p></header>"
            f"<nav>{nav}</nav>{sections}</body></html>")


def write_report(items: Iterable[Union[str, Path]], out: Union[str, Path], *, db_url: Optional[str] = None,
                 title: Optional[str] = None, **options: Any) -> Path:
    """Collect ``items`` (run ids, record files) and write the report to ``out`` atomically."""
    from edgeprobe.fsutil import atomic_write_text

    data = collect(items, db_url=db_url, **options)
    return atomic_write_text(Path(out), render(data, title=title or "edgeprobe report"), fault="report-save")
