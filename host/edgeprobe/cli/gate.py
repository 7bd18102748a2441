"""`edgeprobe compare A B` and `edgeprobe gate --baseline REF --candidate REF`: verdicts per cell,
with CI outputs (JUnit XML, GitHub annotations, a Markdown step summary).

Exit codes (both commands): 0 pass, 1 regression, 2 inconclusive, 3 could not run (bad input,
a device that failed, a baseline that is not there). They differ from the other commands, whose
2 means a usage error, because a CI step must tell "inconclusive" from "could not run".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from rich.markup import escape

EXIT = {"pass": 0, "regression": 1, "inconclusive": 2}
EXIT_COULD_NOT_RUN = 3


def _outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--floor", type=float, default=0.05,
                   help="practical floor: a shift smaller than this fraction is SAME (default 0.05)")
    p.add_argument("--floor-rule", action="append", default=[], metavar="PATTERN=FRACTION",
                   help="a floor per model and/or device, e.g. mobilenet_v2=0.08, *@adb:*=0.1, "
                        "resnet18@local=0.03 (repeatable; the last match wins)")
    p.add_argument("--force", action="store_true", help="compare records of different models or devices")
    p.add_argument("--json", metavar="PATH", help="write the comparisons as JSON")
    p.add_argument("--junit", metavar="PATH", help="write JUnit XML (one testcase per cell)")
    p.add_argument("--summary", metavar="PATH", help="write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)")
    p.add_argument("--annotations", action=argparse.BooleanOptionalAction, default=None,
                   help="print GitHub Actions ::error::/::warning:: lines (default: when $GITHUB_ACTIONS is true)")
    p.add_argument("--db", help="farm database URL, for run:ID references (default: $EDGEPROBE_FARM_DB)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compare", help="compare two sets of launches (record files, directories, farm runs)")
    c.add_argument("baseline", help="a bench --json record, a directory of them, or run:ID (farm run)")
    c.add_argument("candidate", help="the same kinds")
    _outputs(c)
    g = sub.add_parser("gate", help="regression gate: baseline and candidate on one device, ABBA, until decided")
    g.add_argument("--baseline", required=True,
                   help="what bench takes (model, artifact dir), stored records (record file, directory, run:ID), "
                        "or 'history': the last --history-k farm runs of the candidate's cell (needs --db)")
    g.add_argument("--history-k", type=int, default=5, help="farm runs a history baseline uses (default 5)")
    g.add_argument("--history-min", type=int, default=3,
                   help="fewest farm runs a history baseline needs, else exit 3 (default 3)")
    g.add_argument("--candidate", required=True, help="what bench takes (model, artifact dir)")
    g.add_argument("--device", default="local")
    g.add_argument("--token-env", metavar="VAR", help="environment variable holding the device's token")
    g.add_argument("--min-launches", type=int, default=10, help="launches per side before a verdict (default 10)")
    g.add_argument("--max-launches", type=int, default=35, help="cap per side while inconclusive (default 35)")
    g.add_argument("--iterations", type=int, default=20)
    g.add_argument("--warmup", type=int, default=3)
    g.add_argument("--threads", type=int, default=0)
    g.add_argument("--cooldown-s", type=float, default=0.0, help="idle time before every launch")
    g.add_argument("--min-battery-percent", type=float)
    g.add_argument("--max-thermal-status", type=int)
    g.add_argument("--timeout-s", type=float, default=300.0)
    _outputs(g)


def _cells(args: argparse.Namespace, db) -> list:
    from edgeprobe.errors import UsageError
    from edgeprobe.gate import sources
    from edgeprobe.gate.compare import compare_launches

    a, b = sources.load(args.baseline, db), sources.load(args.candidate, db)
    if len(a) == 1 and len(b) == 1:  # one cell each: compare them (the recipe may differ)
        pairs = [(next(iter(a.values())), next(iter(b.values())))]
    else:
        common = [k for k in a if k in b]
        if not common:
            raise UsageError(f"no cell (model, recipe, device) in both: {', '.join('/'.join(k) for k in a)} vs "
                             f"{', '.join('/'.join(k) for k in b)}")
        pairs = [(a[k], b[k]) for k in common]
    return [compare_launches(x, y, baseline_label=args.baseline, candidate_label=args.candidate, floor=args.floor,
                             floor_rules=args.floor_rule, force=args.force) for x, y in pairs]


def _write(args: argparse.Namespace, cells: Sequence, console, time_s: float = 0.0) -> int:
    from edgeprobe.fsutil import atomic_write_text
    from edgeprobe.gate.annotations import annotations, summary_markdown
    from edgeprobe.gate.compare import outcome_of
    from edgeprobe.gate.junit import junit_xml
    from edgeprobe.serde import to_dict

    if args.json:
        atomic_write_text(Path(args.json), json.dumps([to_dict(c) for c in cells], indent=2) + "\n")
    if args.junit:
        atomic_write_text(Path(args.junit), junit_xml(cells, suite=f"edgeprobe {args.command}", time_s=time_s))
    if args.summary:
        with open(args.summary, "a", encoding="utf-8") as f:  # GitHub's step summary is appended to
            f.write(summary_markdown(cells, title=f"edgeprobe {args.command}"))
    show = args.annotations if args.annotations is not None else os.environ.get("GITHUB_ACTIONS") == "true"
    if show:
        for line in annotations(cells):
            sys.stdout.write(line + "\n")
    _render(cells, console)
    return EXIT[outcome_of(cells)]


def _render(cells: Sequence, console) -> None:
    from rich.table import Table

    colour = {"pass": "green", "regression": "red", "inconclusive": "yellow"}
    for c in cells:
        t = Table(title=f"{escape(c.name)}: [{colour[c.outcome]}]{c.outcome}[/] "
                        f"({c.baseline_launches} + {c.candidate_launches} launches)", title_justify="left")
        for col in ("metric", "verdict", "baseline", "candidate", "shift (95 % CI)", "p", "why"):
            t.add_column(col)
        for m in c.metrics:
            s = m.comparison
            if s is None or s.baseline_median is None:
                t.add_row(m.metric, m.verdict, "—", "—", "—", "—", escape(m.reason))
                continue
            ci = f" [{s.shift_ci[0]:+.3g}, {s.shift_ci[1]:+.3g}]" if s.shift_ci else ""
            rel = f" ({s.relative_shift * 100:+.1f} %)" if s.relative_shift is not None else ""
            t.add_row(m.metric + ("" if m.gating else " (reported)"),
                      m.verdict + (" unstable" if m.unstable else ""), f"{s.baseline_median:.4g} {m.unit}",
                      f"{s.candidate_median:.4g} {m.unit}",
                      (f"{s.shift:+.3g}{rel}{ci}" if s.shift is not None else "—"),
                      f"{s.p_value:.2g}" if s.p_value is not None else "—", escape(m.reason))
        console.print(t)


def run(args: argparse.Namespace, console, err_console) -> int:
    from edgeprobe.errors import EdgeprobeError
    from edgeprobe.farm.db.engine import open_db

    try:
        refs = f"{getattr(args, 'baseline', '')} {getattr(args, 'candidate', '')}"
        db = open_db(args.db) if (args.db or os.environ.get("EDGEPROBE_FARM_DB") or "run:" in refs
                                  or getattr(args, "baseline", "") == "history") else None
        if args.command == "compare":
            return _write(args, _cells(args, db), console)
        return _gate(args, db, console, err_console)
    except EdgeprobeError as exc:
        err_console.print(f"[red]could not run:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_COULD_NOT_RUN


def _gate(args: argparse.Namespace, db, console, err_console) -> int:
    import time

    from edgeprobe import api
    from edgeprobe.errors import UsageError

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise UsageError(f"--token-env {args.token_env}: that variable is not set")
    t0 = time.monotonic()
    run = api.gate(args.baseline, args.candidate, device=args.device, token=token, iterations=args.iterations,
                   warmup=args.warmup, threads=args.threads, timeout_s=args.timeout_s, cooldown_s=args.cooldown_s,
                   min_battery_percent=args.min_battery_percent, max_thermal_status=args.max_thermal_status,
                   min_launches=args.min_launches, max_launches=args.max_launches, floor=args.floor,
                   floor_rules=args.floor_rule,
                   force=args.force, db=db, history_k=args.history_k, history_min=args.history_min,
                   progress=lambda m: err_console.print(f"[dim]{escape(m)}[/dim]", highlight=False))
    err_console.print(f"[dim]{len(run.order)} launches in {run.rounds} rounds ("
                      + ("decided" if run.decided else f"cap of {args.max_launches} reached") + ")[/dim]")
    return _write(args, [run.comparison], console, time.monotonic() - t0)
