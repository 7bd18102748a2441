"""The offline HTML report: one self-contained file (plotly's JavaScript inlined, no network) of farm
runs and saved records — the devices × models × recipes matrix with history verdicts, raw sample
distributions, history lines with change points, a sweep's Pareto plot, a split plan's candidates
and policy, and each device's environment and hygiene state.

``collect`` reads the sources (run ids in the farm database, ``--json`` record files), ``render``
turns them into HTML, ``write_report`` does both. Importing this package imports neither torch nor
plotly (plotly is imported when a report is rendered).
"""

from edgeprobe.report.build import Cell, Launch, ReportData, collect, render, write_report

__all__ = ["Cell", "Launch", "ReportData", "collect", "render", "write_report"]
