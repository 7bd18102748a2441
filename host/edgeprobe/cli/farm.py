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
    r.add_argument("--quarantine-after", type=int, default=3,
                   help="infrastructure faults in a row that quarantine a device (default 3)")
    r.add_argument("--quarantine-s", type=float, default=1800.0,
                   help="how long a quarantine lasts before the device's health check (default 1800 s)")
    r.add_argument("--lease-ttl-s", type=float, default=120.0,
                   help="device and job lease lifetime, heart-beaten while held (default 120 s)")
    r.add_argument("--lease-wait-s", type=float, default=900.0,
                   help="how long to wait for a device another farm process holds (default 900 s)")
    r.add_argument("--ray", metavar="ADDRESS",
                   help="run over a Ray cluster (HEAD:PORT): the devices are those its `farm agent`s offer, each "
                        "measured by an actor on its own host; this host must be a node of the cluster "
                        "(pip install 'edgeprobe[ray]'; docs/farm.md)")
    r.add_argument("--ray-wait-s", type=float, default=60.0,
                   help="with --ray: how long to wait for agents offering the matrix's devices (default 60 s)")
    db(r)
    a = fsub.add_parser("agent", help="offer this host's devices to a farm on Ray: join the cluster as a worker "
                                      "node with one resource per healthy device (runs until Ctrl-C)")
    a.add_argument("--address", required=True, metavar="RAY_ADDRESS", help="the Ray head's HOST:PORT")
    a.add_argument("--devices", required=True, metavar="FARM.toml",
                   help="this host's devices: [[device]] tables (id, labels, token_env) as in a farm file")
    a.add_argument("--name", help="this host's name in device ids (NAME/DEVICE; default: the hostname)")
    a.add_argument("--node-ip", help="the address this host's node uses (default: Ray's choice)")
    a.add_argument("--num-cpus", type=int, default=1,
                   help="CPUs this node offers Ray (default 1; the device actors themselves take none)")
    a.add_argument("--object-store-mb", type=int, help="object store size (default: Ray's)")
    a.add_argument("--temp-dir", help="this node's Ray temp dir (default Ray's /tmp/ray; give each node its own "
                                      "where several share one filesystem)")
    s = fsub.add_parser("status", help="jobs per state of a run (default: the latest runs)")
    s.add_argument("run_id", nargs="?")
    db(s)
    d = fsub.add_parser("devices", help="each device: its health now, its lease and its quarantine state")
    d.add_argument("farm_file", nargs="?", help="probe the devices of this farm file (default: list those the "
                                                "database knows, without probing)")
    d.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    d.add_argument("--ray", metavar="ADDRESS", help="the devices the agents of this Ray cluster offer, with the "
                                                    "health each agent found when it started")
    db(d)
    q = fsub.add_parser("quarantine", help="quarantined devices and devices on probation; lift one by hand")
    q.add_argument("--release", metavar="DEVICE", help="lift DEVICE's quarantine now (no health check)")
    db(q)
    res = fsub.add_parser("results", help="one row per (model, recipe, device, launch) of a run")
    res.add_argument("run_id")
    out = res.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    out.add_argument("--csv", action="store_true", help="print the rows as CSV")
    db(res)


def run(args: argparse.Namespace, console, err_console) -> int:
    if args.farm_command == "agent":  # an agent host has no database (and need not have SQLAlchemy): docs/farm.md
        from edgeprobe.farm.agent import run_agent

        return run_agent(args.address, args.devices, name=args.name, node_ip=args.node_ip, num_cpus=args.num_cpus,
                         object_store_mb=args.object_store_mb, temp_dir=args.temp_dir,
                         log=lambda m: err_console.print(escape(m), highlight=False))
    from edgeprobe.errors import UsageError
    from edgeprobe.farm import jobs
    from edgeprobe.farm.db.engine import open_db

    if args.farm_command == "run":
        for flag, value, low in (("--max-attempts", args.max_attempts, 1), ("--quarantine-after", args.quarantine_after, 1),
                                 ("--lease-ttl-s", args.lease_ttl_s, 1.0), ("--quarantine-s", args.quarantine_s, 0.0),
                                 ("--lease-wait-s", args.lease_wait_s, 0.0), ("--ray-wait-s", args.ray_wait_s, 0.0)):
            if value < low:
                raise UsageError(f"{flag} must be >= {low}, got {value}")
    db = open_db(args.db)
    if args.farm_command == "run":
        return _run(args, db, console, err_console)
    if args.farm_command == "devices":
        return _devices(args, db, console)
    if args.farm_command == "quarantine":
        return _quarantine(args, db, console)
    if args.farm_command == "status" and args.run_id is None:
        from edgeprobe.farm.worker import utc

        latest = jobs.runs(db)
        if not latest:
            console.print(f"no farm run in {db.url}")
        for r in latest:
            console.print(f"{escape(r['id'])}  {r['state']:<11} {utc(r['created_utc'])}  "
                          + ", ".join(f"{k} {v}" for k, v in r["counts"].items()) + f"  {escape(r['farm_file'])}",
                          highlight=False)
        return 0
    if args.farm_command == "status":
        counts = jobs.counts(db, args.run_id)
        if not sum(counts.values()):
            raise UsageError(f"no run {args.run_id!r} in {db.url}")
        console.print(f"run {args.run_id} ({jobs.run_state(db, args.run_id)}): "
                      + ", ".join(f"{k} {v}" for k, v in counts.items()))
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


def _run(args: argparse.Namespace, db, console, err_console) -> int:
    from edgeprobe.farm.inventory import load_farm
    from edgeprobe.farm.progress import LiveProgress
    from edgeprobe.farm.scheduler import new_run_id, run_farm

    def log(m: str) -> None:
        err_console.print(f"[dim]{escape(m)}[/dim]", highlight=False)

    farm = load_farm(args.farm_file, devices_listed=not args.ray)
    run_id = args.run_id or new_run_id()
    opener, on_ray = None, None
    if args.ray:
        from edgeprobe.farm.executors import ray as on_ray

        on_ray.connect(args.ray, log)
        farm, offered = on_ray.cluster_farm(farm, wait_s=args.ray_wait_s, log=log)
        opener = on_ray.RayDevices(offered, log=log)
    try:  # a live table per device on a terminal (stderr); the log lines alone when not a terminal
        with LiveProgress(db, run_id, err_console):
            summary = run_farm(farm, db=db, run_id=run_id, max_attempts=args.max_attempts,
                               quarantine_after=args.quarantine_after, quarantine_s=args.quarantine_s,
                               lease_ttl_s=args.lease_ttl_s, lease_wait_s=args.lease_wait_s, log=log,
                               **({"opener": opener} if opener else {}))
    except KeyboardInterrupt:  # before any worker started (lowering): run_farm marked the run interrupted
        console.print(f"run {run_id}: interrupted; resume with --run-id {run_id}")
        return 130
    finally:
        if opener is not None:
            opener.shutdown()
    counts = ", ".join(f"{k} {v}" for k, v in summary.counts.items())
    console.print(f"run {summary.run_id}: {counts} in {summary.wall_s:.1f} s ({db.url})")
    for name, error in summary.lowering_errors.items():
        console.print(f"[red]not lowered:[/red] {escape(name)}: {escape(error)}")
    for note in summary.notes:
        console.print(f"[yellow]{escape(note)}[/yellow]")
    if summary.state in ("interrupted", "incomplete"):
        console.print(f"run {summary.run_id}: {summary.state}; resume with --run-id {summary.run_id}")
    return summary.exit_code


def _device_rows(args: argparse.Namespace, db) -> list[dict]:
    from edgeprobe.farm import fleet, leases
    from edgeprobe.farm.worker import utc

    known = {h.id: h for h in fleet.all_devices(db)}
    ray_health: dict[str, dict] = {}
    if args.ray:
        from edgeprobe.errors import UsageError
        from edgeprobe.farm.executors import ray as on_ray

        if args.farm_file:
            raise UsageError("farm devices: give a farm file or --ray, not both")
        on_ray.connect(args.ray)
        offered = on_ray.read_inventories()
        entries = [(d.id, dict(d.labels), None) for d in offered]
        ray_health = {d.id: {"reachable": d.healthy, "description": d.health.removeprefix("ok · ") if d.healthy else "",
                             "error": None if d.healthy else d.health, "host": d.host} for d in offered}
    elif args.farm_file:
        from edgeprobe.farm.health import probe
        from edgeprobe.farm.inventory import load_farm

        entries = [(e.id, dict(e.labels), e) for e in load_farm(args.farm_file).devices]
    else:
        entries = [(h.id, dict(h.labels), None) for h in known.values()]
    rows = []
    for dev_id, labels, entry in entries:
        h = known.get(dev_id)
        row = {"device": dev_id, "labels": labels, "quarantine": h.status if h else "ok",
               "quarantined_until": utc(h.quarantined_until) if h and h.quarantined_until else None,
               "quarantine_reason": h.quarantine_reason if h else None,
               "consecutive_failures": h.consecutive_failures if h else 0, "suspect": h.suspect if h else False,
               "lease": leases.holder_of(db, dev_id), "last_seen": utc(h.last_seen_utc) if h and h.last_seen_utc else None}
        if dev_id in ray_health:  # probed by its agent when the agent started
            row.update(ray_health[dev_id])
        elif entry is not None:
            p = probe(entry)
            row.update({"reachable": p.reachable, "description": p.description, "battery_percent": p.battery_percent,
                        "charging": p.charging, "thermal": p.thermal, "error": p.error})
        rows.append(row)
    return rows


def _devices(args: argparse.Namespace, db, console) -> int:
    rows = _device_rows(args, db)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    from rich.table import Table

    t = Table(title=f"farm devices ({db.url})")
    for col in ("device", "labels", "health", "lease", "quarantine", "failures", "last seen"):
        t.add_column(col)
    for r in rows:
        if "reachable" in r:
            bits = [r["description"]] if r["reachable"] else [f"unreachable: {r['error']}"]
            if r.get("battery_percent") is not None:
                bits.append(f"battery {r['battery_percent']:g} %" + (" charging" if r.get("charging") else ""))
            if r.get("thermal"):
                bits.append(f"thermal {r['thermal']}")
            health = " · ".join(b for b in bits if b)
        else:
            health = "not probed (give the farm file)"
        q = r["quarantine"] + (f" until {r['quarantined_until']}: {r['quarantine_reason']}"
                               if r["quarantine"] != "ok" else "")
        t.add_row(*(escape(str(x)) for x in (
            r["device"], ", ".join(f"{k}={v}" for k, v in r["labels"].items()) or "—", health, r["lease"] or "—", q,
            r["consecutive_failures"], r["last_seen"] or "—")))
    console.print(t)
    return 0


def _quarantine(args: argparse.Namespace, db, console) -> int:
    from edgeprobe.errors import UsageError
    from edgeprobe.farm import fleet
    from edgeprobe.farm.worker import utc

    if args.release:
        if not fleet.release(db, args.release):
            raise UsageError(f"{args.release} is not quarantined in {db.url}")
        console.print(f"{args.release}: quarantine lifted")
        return 0
    held = [h for h in fleet.all_devices(db) if h.status != fleet.OK]
    if not held:
        console.print("no device is quarantined")
    for h in held:
        console.print(f"{escape(h.id)}: {h.status}" + (" (health check on next use)" if h.status == fleet.PROBATION
                                                        else f" until {utc(h.quarantined_until)}")
                      + f": {escape(h.quarantine_reason or '')}")
    return 0
