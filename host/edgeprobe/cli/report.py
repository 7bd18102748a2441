"""`edgeprobe report`: one self-contained HTML file (opens offline) of farm runs and saved records."""

from __future__ import annotations

import argparse

from rich.markup import escape


def add_parser(sub: argparse._SubParsersAction) -> None:
    from edgeprobe.report.build import DEFAULT_BASELINE_RUNS, DEFAULT_FLOOR_PERCENT, DEFAULT_MIN_BASELINE_RUNS

    r = sub.add_parser("report", help="an offline HTML report of farm runs and bench/sweep/split records")
    r.add_argument("sources", nargs="+", metavar="RUN_OR_RECORDS",
                   help="farm run ids (latest: the newest run) and/or --json files of bench, sweep or split")
    r.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    r.add_argument("--db", help="farm database URL (default: $EDGEPROBE_FARM_DB, else farm.sqlite in the user data "
                                "dir), as in `edgeprobe farm`")
    r.add_argument("--title", help="the page's title (default: edgeprobe report)")
    r.add_argument("--baseline-runs", type=int, default=DEFAULT_BASELINE_RUNS,
                   help=f"history baseline: median of this many earlier runs (default {DEFAULT_BASELINE_RUNS})")
    r.add_argument("--min-baseline-runs", type=int, default=DEFAULT_MIN_BASELINE_RUNS,
                   help=f"fewer earlier runs than this: no baseline, no verdict (default {DEFAULT_MIN_BASELINE_RUNS})")
    r.add_argument("--floor-percent", type=float, default=DEFAULT_FLOOR_PERCENT,
                   help=f"a change smaller than this is SAME (default {DEFAULT_FLOOR_PERCENT:g})")


def run(args: argparse.Namespace, console, err_console) -> int:
    from edgeprobe.report import write_report

    path = write_report(args.sources, args.out, db_url=args.db, title=args.title, baseline_runs=args.baseline_runs,
                        min_baseline_runs=args.min_baseline_runs, floor_percent=args.floor_percent)
    console.print(f"report written: {escape(str(path))} ({path.stat().st_size / 2**20:.1f} MiB, opens offline)")
    return 0
