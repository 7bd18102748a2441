"""`edgeprobe farm …`: run a farm file's matrix over many devices, and read its results back."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from rich.markup import escape


def add_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("farm", help="a test matrix over many devices, unattended and resumable, with a results "
                                    "database")
    fsub = f.add_subparsers(dest="farm_command", required=True)

    def db(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", help="database URL (default: $EDGEPROBE_FARM_DB, else farm.sqlite in the user data "
                                    "dir; postgresql+psycopg://… for a shared lab)")

    r = fsub.add_parser("run", help="measure every cell of FARM.toml (resume a run with --run-id)")
    r.add_argument("farm_file")
    r.add_argument("--run-id", help="resume this run: finished jobs are not measured again")
    r.add_argument("--max-attempts", type=int, default=3, help="attempts per job, over every device (default 3)")
    db(r)
    s = fsub.add_parser("status", help="jobs per state of a run")
    s.add_argument("run_id")
    db(s)
    res = fsub.add_parser("results", help="one row per (model, recipe, device, launch) of a run")
    res.add_argument("run_id")
    out = res.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    out.add_argument("--csv", action="store_true", help="print the rows as CSV")
    db(res)


def run(args: argparse.Namespace, console, err_console) -> int:
    from edgeprobe.errors import UsageError
    from edgeprobe.farm import jobs
    from edgeprobe.farm.db.engine import open_db

    if args.farm_command == "run" and args.max_attempts < 1:
        raise UsageError("--max-attempts must be >= 1")
    db = open_db(args.db)
    if args.farm_command == "run":
        from edgeprobe.farm.inventory import load_farm
        from edgeprobe.farm.scheduler import run_farm

        farm = load_farm(args.farm_file)
        summary = run_farm(farm, db=db, run_id=args.run_id, max_attempts=args.max_attempts,
                           log=lambda m: err_console.print(f"[dim]{escape(m)}[/dim]", highlight=False))
        counts = ", ".join(f"{k} {v}" for k, v in summary.counts.items())
        console.print(f"run {summary.run_id}: {counts} in {summary.wall_s:.1f} s ({db.url})")
        for name, error in summary.lowering_errors.items():
            console.print(f"[red]not lowered:[/red] {escape(name)}: {escape(error)}")
        return summary.exit_code
    if args.farm_command == "status":
        counts = jobs.counts(db, args.run_id)
        if not sum(counts.values()):
            raise UsageError(f"no run {args.run_id!r} in {db.url}")
        console.print(f"run {args.run_id}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    rows = jobs.results(db, args.run_id)
    if not rows:
        raise UsageError(f"no run {args.run_id!r} in {db.url}")
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif args.csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        from rich.table import Table

        t = Table(title=f"run {args.run_id}")
        for col in ("model", "recipe", "device", "launch", "status", "fault_class", "attempts", "p50_ms"):
            t.add_column(col)
        for r in rows:
            p50 = r.get("p50_ms")
            t.add_row(*(escape(str(r.get(c) if r.get(c) is not None else "—")) for c in
                        ("model", "recipe", "device", "launch", "status", "fault_class", "attempts")),
                      f"{p50:.4f}" if p50 is not None else "—")
        console.print(t)
    return 0
