"""Device-farm benchmarks (issue 13): the scheduler's own cost per job, and a farm run against the
same cells measured one by one with ``edgeprobe.api.bench``.

1. **Scheduler overhead per job** (goal <= 5 ms). ``run_farm`` over 1000 tiny jobs on in-memory
   ``MockTransport`` devices (1 or 4; ``tiny_cnn``/fp32, ``launches`` = 1000 / devices), journalled
   in a fresh SQLite (WAL) file in a temp dir. The farm file names the devices
   ``tcp:127.0.0.1:7001``... (ids must parse); the opener returns mock sessions whatever the id, so
   no network is touched. The group is lowered before timing (the timed lowering is a cache hit)
   and timed anyway by wrapping ``scheduler._lower_groups``; each worker is timed at the executor
   seam, each ``MeasureSession.measure`` call by a session subclass, the mock runner by its handler:

   * ``in-worker overhead`` = sum over workers of (worker wall - time inside ``measure``) / N: what
     a device spends in the scheduler's code (heartbeat, claim, finish, logging) per job;
   * ``run overhead`` = (farm wall - lowering - longest worker wall): the set-up and tear-down
     around the workers (run row, 1000 job rows inserted, counts), amortized: / N;
   * ``overhead per job`` = in-worker overhead + run overhead / N (per device); and its CPU
     form: (process CPU in run_farm - lowering's - the measure calls' thread CPU) / N;
   * ``scheduler ms/job`` = (farm wall - lowering - the mock runner's own time) / N, the issue's
     definition ("farm wall time minus the jobs' own time, per job"), against the goal.

   With 4 devices the worker threads contend for the interpreter lock and SQLite's write lock on
   purely host-side work (the mock answers at once): their wall times include waiting for each
   other, an upper bound on what a real device (which mostly waits on I/O) would see.

2. **Farm vs one by one.** 2 models (``tiny_cnn``, ``digits_cnn``) x 3 recipes (fp32, int8,
   magnitude:0.5) x 3 real devices of this machine (``local``, a test adbd from ``tests/adbd.py`` in
   a child process, ``edgeprobe runner serve`` over TCP with a token): 18 cells, one launch each.
   *farm*: ``run_farm`` into a fresh SQLite db. *one by one*, as a user would script it: for each
   (model, recipe) the ``compress.apply_and_lower`` the farm calls (``api.bench`` takes no recipe;
   given a model name it lowers fp32 through the artifact cache), then one ``api.bench(artifact,
   device=...)`` per device in sequence, each opening its device, deploying (verifying) the runner
   bundle and closing it. The artifact cache and every device's runner bundle are warmed first, so
   both sides lower from the cache (which still re-applies each recipe: int8 calibrates again),
   once per (model, recipe). What differs: the farm measures the 3 devices in parallel on one
   session each and journals every job. Interleaved (farm, loop, loop, farm, ...), medians. The
   devices share this host's CPUs, so the farm's parallel runs compete for cores (p50s printed).

    .venv/bin/python benchmarks/farm.py [--only overhead|vs-bench] [--jobs 1000] [--devices 1,4]
                                        [--repeats 2] [--iterations 5] [--warmup 1]

Prints Markdown tables (paste into docs/benchmarks.md with the command line).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

GOAL_MS = 5.0
MODELS = ("tiny_cnn", "digits_cnn")
RECIPES = ("fp32", "int8", "magnitude:0.5")
TOKEN = "farm-bench-token"
Say = Callable[[str], None]


# -- 1. scheduler overhead on mock devices ------------------------------------------------------

def _timed_lowering(box: dict) -> Callable[[], Any]:
    """Wrap ``scheduler._lower_groups`` to add its wall time to ``box["lowering_s"]``; returns undo."""
    from edgeprobe.farm import scheduler

    orig = scheduler._lower_groups

    def timed(*a: Any, **kw: Any) -> Any:
        t0, c0 = time.monotonic(), time.thread_time()
        try:
            return orig(*a, **kw)
        finally:
            box["lowering_s"] = box.get("lowering_s", 0.0) + time.monotonic() - t0
            box["lowering_cpu_s"] = box.get("lowering_cpu_s", 0.0) + time.thread_time() - c0

    scheduler._lower_groups = timed
    return lambda: setattr(scheduler, "_lower_groups", orig)


def _timed_executor():
    from edgeprobe.farm.executors import ThreadExecutor

    class TimedExecutor(ThreadExecutor):
        """Threads, as the default; records each worker's wall seconds."""

        def __init__(self) -> None:
            super().__init__()
            self.worker_s: list[float] = []

        def submit(self, name: str, fn: Callable[[], Any]):
            def timed() -> Any:
                t0 = time.monotonic()
                try:
                    return fn()
                finally:
                    self.worker_s.append(time.monotonic() - t0)

            return super().submit(name, timed)

    return TimedExecutor()


def _mock_opener(sessions: list):
    """An ``Opener`` that gives every device a session on its own MockTransport, whatever its id."""
    from edgeprobe.devices import Device
    from edgeprobe.devices.mock import MockTransport, ok_record
    from edgeprobe.session import MeasureSession

    class Handler:
        """The mock runner: writes an ok record; counts its own seconds."""

        s = 0.0

        def __call__(self, run):
            t0 = time.monotonic()
            run.write_record(ok_record((1.0, 1.0, 1.0)))
            res = run.ok()
            self.s += time.monotonic() - t0
            return res

    class TimedSession(MeasureSession):
        def __init__(self, device, handler: Handler) -> None:
            super().__init__(device)
            self.handler, self.measure_s, self.measure_cpu_s = handler, 0.0, 0.0

        def measure(self, *a: Any, **kw: Any):
            t0, c0 = time.monotonic(), time.thread_time()
            try:
                return super().measure(*a, **kw)
            finally:
                self.measure_s += time.monotonic() - t0
                self.measure_cpu_s += time.thread_time() - c0

    def opener(entry, _format: str):
        s = TimedSession(Device(entry.id, MockTransport(h := Handler()), "python"), h)
        sessions.append(s)
        return s

    return opener


def _mock_farm(n_devices: int, jobs: int):
    """``jobs`` tiny_cnn/fp32 launches over ``n_devices`` ids that parse; the opener never dials them."""
    from edgeprobe.farm.inventory import parse_farm

    if jobs % n_devices:
        raise SystemExit(f"--jobs {jobs} is not a multiple of {n_devices} devices")
    devs = "".join(f'[[device]]\nid = "tcp:127.0.0.1:{7001 + i}"\n\n' for i in range(n_devices))
    return parse_farm(f'{devs}[matrix]\nmodels = ["tiny_cnn"]\nrecipes = ["fp32"]\nlaunches = {jobs // n_devices}\n'
                      'iterations = 3\nwarmup = 0\n', "<mock farm>")


def run_overhead_bench(jobs: int = 1000, device_counts: tuple[int, ...] = (1, 4), repeats: int = 2,
                       say: Say = lambda _m: None) -> list[dict]:
    from sqlalchemy import text

    from edgeprobe.farm import scheduler
    from edgeprobe.farm.db.engine import open_db
    from edgeprobe.models import load_model

    _lower(load_model("tiny_cnn"), "fp32")  # into the artifact cache, untimed (the farm lowers the same way)
    rows = []
    for n_dev in device_counts:
        farm = _mock_farm(n_dev, jobs)
        per: list[dict] = []
        for i in range(repeats):
            with tempfile.TemporaryDirectory(prefix="ep-bench-farm-") as tmp:
                db = open_db(f"sqlite:///{Path(tmp) / 'farm.sqlite'}")
                with db.session() as s:
                    mode = s.execute(text("PRAGMA journal_mode")).scalar()
                box, sessions, executor = {}, [], _timed_executor()
                undo = _timed_lowering(box)
                try:
                    t0, c0 = time.monotonic(), time.process_time()
                    summary = scheduler.run_farm(farm, db=db, run_id=f"overhead-{n_dev}-{i}", executor=executor,
                                                 opener=_mock_opener(sessions))
                    wall, cpu = time.monotonic() - t0, time.process_time() - c0
                finally:
                    undo()
                    db.close()
            if summary.counts.get("done") != jobs:
                raise RuntimeError(f"mock farm: {summary.counts} (expected {jobs} done)")
            measure_s = sum(s.measure_s for s in sessions)
            in_worker = (sum(executor.worker_s) - measure_s) / jobs
            run_s = wall - box["lowering_s"] - max(executor.worker_s)
            per.append({"wall_s": wall, "lowering_s": box["lowering_s"], "worker_s": sum(executor.worker_s),
                        "measure_s": measure_s, "handler_s": sum(s.handler.s for s in sessions),
                        "in_worker_ms": in_worker * 1e3, "run_ms": run_s / jobs * 1e3,
                        "overhead_ms": (in_worker + run_s / jobs) * 1e3, "cpu_ms": (cpu - box["lowering_cpu_s"] - sum(
                            s.measure_cpu_s for s in sessions)) / jobs * 1e3,
                        "wall_per_job_ms": (wall - box["lowering_s"]) / jobs * 1e3, "journal_mode": mode})
            say(f"{n_dev} mock device(s), {jobs} jobs: wall {wall:.2f} s, overhead {per[-1]['overhead_ms']:.3f} ms/job")
        med = {k: statistics.median(p[k] for p in per) for k in per[0] if k != "journal_mode"}
        rows.append({"devices": n_dev, "jobs": jobs, "repeats": repeats, "journal_mode": per[0]["journal_mode"], **med})
    return rows


def print_overhead_table(rows: list[dict]) -> None:
    print("| mock devices | jobs | farm wall s | lowering s | mock runner s (sum) | **scheduler ms/job** | "
          f"ratio to the {GOAL_MS:g} ms goal | per-device in-worker ms/job | CPU ms/job |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sched = (r["wall_s"] - r["lowering_s"] - r["handler_s"]) / r["jobs"] * 1e3
        print(f"| {r['devices']} | {r['jobs']} | {r['wall_s']:.2f} | {r['lowering_s']:.3f} | {r['handler_s']:.3f} | "
              f"**{sched:.3f}** | {sched / GOAL_MS:.2f} | {r['overhead_ms']:.3f} | {r['cpu_ms']:.3f} |")
    print(f"\n(SQLite {rows[0]['journal_mode']} in a temp dir, a fresh database per run, medians of {rows[0]['repeats']} "
          "runs. scheduler ms/job = (farm wall - lowering - the mock runner's own time) / jobs, the issue's "
          "definition: everything the farm spends around the runs, the session's push/pull/parse included. "
          "per-device in-worker = (workers' wall - time inside measure) / jobs + set-up / jobs: with several "
          "devices each worker's wall includes waiting for the others' transactions and the interpreter lock. "
          "CPU = (process CPU in run_farm - lowering's - measure calls') / jobs. Load average at the end "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())})")


# -- 2. farm vs one by one on three real devices -------------------------------------------------

class _TcpRunner:
    """``edgeprobe runner serve`` on loopback with a token, in a child process (as tests/test_farm_run.py)."""

    def __init__(self, workdir: Path, native_runner: Path) -> None:
        self.log = workdir.with_suffix(".log")  # a file, not a pipe nobody reads: a full pipe would block it
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgeprobe", "runner", "serve", "--host", "127.0.0.1", "--port", "0",
                 "--token", TOKEN, "--name", "farm-bench-tcp", "--workdir", str(workdir),
                 "--native-runner", str(native_runner), "--no-zeroconf"], stdout=subprocess.PIPE, stderr=err, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.close()
            raise RuntimeError("edgeprobe runner serve did not start: " + self.log.read_text()[-2000:])
        self.where = json.loads(line)["listening"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _native_runner() -> Path:
    """The installed native runner bundle's binary, else one built into a temp dir (as tests/conftest.py)."""
    import platform

    from edgeprobe.errors import RunnerNotBuiltError
    from edgeprobe.native import BINARY, build_native_runner, install_dir, verify_bundle

    bundle = install_dir()
    try:
        verify_bundle(bundle)
    except RunnerNotBuiltError:
        bundle = Path(tempfile.mkdtemp(prefix="ep-bench-runner-")) / platform.machine()
        build_native_runner(bundle, log=lambda _m: None)
        os.environ["EDGEPROBE_RUNNER_DIR"] = str(bundle.parent)
    return bundle / "bin" / BINARY


def _farm_text(devices: list[str], iterations: int, warmup: int) -> str:
    devs = "".join(f'[[device]]\nid = "{d}"\n' + ('token_env = "FARM_BENCH_TOKEN"\n' if d.startswith("tcp:") else "")
                   + "\n" for d in devices)
    return (f"{devs}[matrix]\nmodels = {json.dumps(list(MODELS))}\nrecipes = {json.dumps(list(RECIPES))}\n"
            f"launches = 1\niterations = {iterations}\nwarmup = {warmup}\n")


def _lower(spec: Any, recipe: str) -> Any:
    """One (model, recipe) lowered the way the farm's ``_lower_groups`` does it (artifact cache on)."""
    from edgeprobe import compress

    ctx = compress.Context(example_inputs=spec.example_inputs, log=lambda _m: None)
    return compress.apply_and_lower(spec, recipe, ctx, module=spec.module.eval())[2]


def _one_by_one(devices: list[str], iterations: int, warmup: int, box: dict) -> list[float]:
    """The user's script: lower each (model, recipe), then ``api.bench`` it on each device in turn;
    adds its lowering seconds to ``box``."""
    from edgeprobe import api
    from edgeprobe.models import load_model

    p50s: list[float] = []
    lowering_s = 0.0  # the compress.apply_and_lower calls, from the warm artifact cache
    for model in MODELS:
        spec = load_model(model)
        for recipe in RECIPES:
            t0 = time.monotonic()
            art = _lower(spec, recipe)
            lowering_s += time.monotonic() - t0
            for dev in devices:
                r = api.bench(art, device=dev, token=TOKEN if dev.startswith("tcp:") else None,
                              iterations=iterations, warmup=warmup)
                if not r.ok:
                    raise RuntimeError(f"bench {model}/{recipe} on {dev}: {r.run.error}")
                p50s.append(r.stats.p50_ms)
    box.setdefault("one-by-one lowering", []).append(lowering_s)
    return p50s


def _farm_once(farm: Any, tmp: Path, run_id: str, box: dict) -> list[float]:
    """One farm run into a fresh db; its lowering and longest-worker seconds go to ``box``."""
    from edgeprobe.farm import jobs
    from edgeprobe.farm.db.engine import open_db
    from edgeprobe.farm.scheduler import run_farm

    db = open_db(f"sqlite:///{tmp / (run_id + '.sqlite')}")
    executor, timed = _timed_executor(), {}
    undo = _timed_lowering(timed)
    try:
        lines: list[str] = []
        summary = run_farm(farm, db=db, run_id=run_id, executor=executor, log=lines.append)
        if summary.exit_code != 0:
            raise RuntimeError(f"farm run {run_id}: {summary.counts}; " + "; ".join(l for l in lines if "fail" in l))
        box.setdefault("farm lowering", []).append(timed["lowering_s"])
        box.setdefault("farm longest worker", []).append(max(executor.worker_s))
        return [r["p50_ms"] for r in jobs.results(db, run_id)]
    finally:
        undo()
        db.close()


def run_vs_bench(repeats: int = 2, iterations: int = 5, warmup: int = 1, say: Say = lambda _m: None) -> dict:
    from push import _Adbd  # the test adbd in a child process

    from edgeprobe import api
    from edgeprobe.farm.inventory import parse_farm
    from edgeprobe.models import load_model

    os.environ.setdefault("EDGEPROBE_ADB_KEY", str(Path(tempfile.mkdtemp(prefix="ep-bench-key-")) / "adbkey"))
    os.environ["FARM_BENCH_TOKEN"] = TOKEN
    with tempfile.TemporaryDirectory(prefix="ep-bench-farm-") as name:
        tmp, tcp, native = Path(name), None, _native_runner()
        adbd = _Adbd(tmp / "dev", 1 << 20)
        try:
            tcp = _TcpRunner(tmp / "tcpdev", native)
            devices = ["local", f"adb:127.0.0.1:{adbd.port}", f"tcp:{tcp.where}"]
            farm = parse_farm(_farm_text(devices, iterations, warmup), str(tmp / "farm.toml"))
            say("warming: lowering 6 groups into the artifact cache, the runner bundle onto each device")
            warm = [_lower(load_model(m), r) for m in MODELS for r in RECIPES]
            for dev in devices:
                api.bench(warm[0], device=dev, token=TOKEN if dev.startswith("tcp:") else None, iterations=1, warmup=0)
            times, p50s, box = {"farm": [], "one by one": []}, {"farm": [], "one by one": []}, {}
            for i in range(repeats):
                for mode in (("farm", "one by one") if i % 2 == 0 else ("one by one", "farm")):
                    t0 = time.monotonic()
                    got = (_farm_once(farm, tmp, f"vs-{i}", box) if mode == "farm"
                           else _one_by_one(devices, iterations, warmup, box))
                    times[mode].append(time.monotonic() - t0)
                    if len(got) != len(MODELS) * len(RECIPES) * len(devices):
                        raise RuntimeError(f"{mode}: {len(got)} cells measured")
                    p50s[mode].extend(got)
                    low = box["farm lowering" if mode == "farm" else "one-by-one lowering"][-1]
                    box.setdefault(f"{mode} wall - lowering", []).append(times[mode][-1] - low)
                    say(f"[{mode}] {times[mode][-1]:.2f} s")
        finally:
            if tcp is not None:
                tcp.close()
            adbd.close()
    return {"times": times, "p50s": p50s, "parts": {k: statistics.median(v) for k, v in box.items()}, "repeats": repeats, "iterations": iterations, "warmup": warmup,
            "cells": len(MODELS) * len(RECIPES) * 3}


def print_vs_table(r: dict) -> None:
    farm_s, loop_s = (statistics.median(r["times"][m]) for m in ("farm", "one by one"))
    print("| cells | farm wall s | one by one wall s | ratio farm/one-by-one | farm runs s | one-by-one runs s | "
          "median cell p50 ms (farm / one by one) |")
    print("|---|---|---|---|---|---|---|")
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(f"| {r['cells']} | {farm_s:.2f} | {loop_s:.2f} | {farm_s / loop_s:.2f} | {fmt(r['times']['farm'])} | "
          f"{fmt(r['times']['one by one'])} | {statistics.median(r['p50s']['farm']):.3f} / "
          f"{statistics.median(r['p50s']['one by one']):.3f} |")
    print("\nparts (medians over the repeats, s): " + ", ".join(f"{k} {v:.2f}" for k, v in r["parts"].items()))
    print(f"\n(models {', '.join(MODELS)} x recipes {', '.join(RECIPES)} x devices local, test adbd, TCP runner; "
          f"iterations {r['iterations']}, warm-up {r['warmup']}; medians of {r['repeats']} interleaved repeats; "
          "lowering from a warm artifact cache on both sides)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["overhead", "vs-bench"])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--devices", default="1,4", help="mock device counts for the overhead benchmark")
    for flag, default in (("--repeats", 2), ("--iterations", 5), ("--warmup", 1)):
        ap.add_argument(flag, type=int, default=default)
    args = ap.parse_args(argv)
    say = lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)  # noqa: E731
    if args.only != "vs-bench":
        print("### Scheduler overhead per job (mock devices, SQLite in a temp dir)\n")
        print_overhead_table(run_overhead_bench(args.jobs, tuple(int(d) for d in args.devices.split(",")),
                                                args.repeats, say=say))
    if args.only != "overhead":
        print("\n### Farm vs one by one with api.bench (local, test adbd, TCP runner)\n")
        print_vs_table(run_vs_bench(args.repeats, args.iterations, args.warmup, say=say))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
