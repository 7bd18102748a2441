"""Assemble the report's sections into one self-contained HTML file and write it.

``render`` puts the sections (``sections``: matrix, runs, devices; ``figures``: distributions,
history, sweep, split) into one page with its CSS, and inlines plotly's JavaScript once from its
Python package: the page makes no network request. ``write_report`` collects the sources
(``sources.collect``) and writes the page atomically.

Every number on the page is either measured (the runner's samples, the database's result rows,
fidelity scored on the host) or labelled a prediction (a split plan's costs); a meter that was not
available is printed as ``unavailable: <reason>``, never as 0. Everything that comes from a record
is HTML-escaped; plotly's JSON embedding escapes ``<``/``>``/``/`` in figure data.

The names of the other report modules that callers reach through this one (``collect``, the data
classes, the defaults ``cli/report.py`` reads, and helpers the tests call) are imported here too.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from edgeprobe.report.figures import _dist_figures, _history_figures, _Plots, _split_html, _sweep_html
from edgeprobe.report.sections import _devices_html, _matrix_html, _runs_html
from edgeprobe.report.sources import (DEFAULT_BASELINE_RUNS, DEFAULT_FLOOR_PERCENT,  # noqa: F401 (re-exported)
                                      DEFAULT_MIN_BASELINE_RUNS, Cell, HistoryView, Launch, ReportData, _cell_key,
                                      collect)
from edgeprobe.report.text import energy_text, esc  # noqa: F401 (energy_text: re-exported)

SECTIONS = (("matrix", "Matrix: devices × models × recipes"), ("distributions", "Per-iteration latency distributions"),
            ("history", "History across farm runs"), ("sweep", "Compression sweep"), ("split", "Split plan"),
            ("devices", "Devices: environment and hygiene"))


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
