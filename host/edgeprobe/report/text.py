"""Escaping and the text of numbers, units, times and meters, shared by the report's sections and figures.

Everything that comes from a record goes through ``esc``. A meter that was not available is printed
as ``unavailable: <reason>`` (``_unavailable``), a value a device did not report as ``not
reported``, never as 0.
"""

from __future__ import annotations

import datetime as _dt
import html
import statistics
from typing import Any, Optional, Sequence

from edgeprobe.report.sources import Cell


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


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
