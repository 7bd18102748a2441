"""Time saved by the shared measurement session (``edgeprobe.session``), over the test adbd.

Two workloads, each run both ways, interleaved (A B A B ...) in one process against one test adbd
(tests/adbd.py, the real ADB protocol on loopback, in a child process of its own):

* ``sweep``: ``edgeprobe.api.sweep(digits_cnn, "fp32,int8,channel", device=adb:…)``, no training;
* ``split --confirm 3``: ``edgeprobe.api.split(mobilenet_v2-sized digits_cnn, device=adb:…, confirm=3)``:
  the device costs (profile + bench) and the confirmed heads are measured on the device.

*shared* is the code as it is: one session per command (device opened, runner bundle verified and
described once). *per measurement* is the path before the session existed, emulated by wrapping
``MeasureSession.measure`` so that each measurement opens the device (and checks it) once to
check and once to measure, deploys (verifies every bundle file by sha256 on the device) and closes
it again, exactly what each ``api.bench`` call did. Everything else (compression, lowering from the
cache, fidelity scoring, planning) is the same code both ways; the artifact cache is warmed first so
lowering does not dominate the first repeat.

    .venv/bin/python benchmarks/session.py [--repeats 3] [--iterations 5]

Prints a Markdown table: median wall seconds per command, the ratio shared/per-measurement, and the
device-side seconds (opening, deploying) counted by the sessions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from push import _Adbd  # noqa: E402 - the test adbd in a child process


class _Counts:
    def __init__(self) -> None:
        self.opens = self.deploys = self.measurements = 0
        self.open_s = self.deploy_s = 0.0

    def add(self, stats) -> None:
        self.opens += 1
        self.deploys += stats.deploys
        self.measurements += stats.measurements
        self.open_s += stats.open_s
        self.deploy_s += stats.deploy_s


def _patch(mode: str, counts: _Counts):
    """Install the ``mode`` path and count what the sessions did; returns an undo function."""
    from edgeprobe import session as S
    from edgeprobe.devices import check_device

    orig_measure, orig_close = S.MeasureSession.measure, S.MeasureSession.close

    def close(self) -> None:
        if not self._closed:
            counts.add(self.stats)
        orig_close(self)

    def per_measurement(self, artifact, config=S.MeasureConfig(), **kw):
        # what api.bench did for every measurement: check (open, check, close), then open, deploy,
        # measure, describe, close
        check_device(self.id, runner=self.runner, token=getattr(self.transport, "_token", None),
                     format=artifact.manifest.format)
        fresh = S.open_session(self.id, runner=self.runner, token=getattr(self.transport, "_token", None),
                               log=self.log)
        try:
            return orig_measure(fresh, artifact, config, **kw)
        finally:
            fresh.close()

    S.MeasureSession.close = close
    if mode == "per-measurement":
        S.MeasureSession.measure = per_measurement

    def undo() -> None:
        S.MeasureSession.measure, S.MeasureSession.close = orig_measure, orig_close

    return undo


def _sweep(device: str, iterations: int) -> None:
    from edgeprobe import api

    res = api.sweep("digits_cnn", "fp32,int8,channel", device=device, train_epochs=0, iterations=iterations,
                    warmup=1, eval_samples=64)
    bad = [r for r in res.rows if r.status != "ok"]
    if bad:
        raise RuntimeError(f"sweep rows failed: {[(r.recipe, r.error) for r in bad]}")


def _split(device: str, iterations: int) -> None:
    from edgeprobe import api

    plan = api.split("digits_cnn", device=device, confirm=3, iterations=iterations, warmup=1)
    confirmed = [r for r in plan.candidates if r.measured_head_ms is not None]
    if len(confirmed) < 2:
        raise RuntimeError(f"split --confirm measured {len(confirmed)} heads; expected at least 2")


WORKLOADS = {"sweep 3 recipes": _sweep, "split --confirm 3": _split}


def run_session_bench(repeats: int = 3, iterations: int = 5, say=lambda _m: None,
                      workloads: tuple[str, ...] = tuple(WORKLOADS)) -> list[dict]:
    os.environ.setdefault("EDGEPROBE_ADB_KEY", str(Path(tempfile.mkdtemp(prefix="ep-bench-key-")) / "adbkey"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="ep-bench-session-") as tmp:
        adbd = _Adbd(Path(tmp) / "dev", 1 << 20)
        try:
            device = f"adb:127.0.0.1:{adbd.port}"
            for name in workloads:
                fn = WORKLOADS[name]
                say(f"{name}: warming the artifact cache")
                fn(device, iterations)
                times: dict[str, list[float]] = {"shared": [], "per-measurement": []}
                counts = {m: _Counts() for m in times}
                for i in range(repeats):
                    for mode in (("shared", "per-measurement") if i % 2 == 0 else ("per-measurement", "shared")):
                        undo = _patch(mode, counts[mode])
                        try:
                            t0 = time.monotonic()
                            fn(device, iterations)
                            times[mode].append(time.monotonic() - t0)
                        finally:
                            undo()
                        say(f"{name} [{mode}] {times[mode][-1]:.2f} s")
                shared, per = statistics.median(times["shared"]), statistics.median(times["per-measurement"])
                rows.append({"workload": name, "shared_s": shared, "per_measurement_s": per, "ratio": shared / per,
                             "repeats": repeats, "counts": counts})
        finally:
            adbd.close()
    return rows


def print_table(rows: list[dict]) -> None:
    print("| workload | shared session s | session per measurement s | ratio shared/per | sessions opened "
          "(shared / per) | deploys (shared / per) | open+deploy s (shared / per) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["counts"]["shared"], r["counts"]["per-measurement"]
        n = r["repeats"]
        print(f"| {r['workload']} | {r['shared_s']:.2f} | {r['per_measurement_s']:.2f} | {r['ratio']:.2f} | "
              f"{a.opens / n:g} / {b.opens / n:g} | {a.deploys / n:g} / {b.deploys / n:g} | "
              f"{(a.open_s + a.deploy_s) / n:.2f} / {(b.open_s + b.deploy_s) / n:.2f} |")
    print("\n(medians of the repeats; counts and device seconds are per command, averaged over the repeats; "
          "per measurement also opens the device once more per measurement to check it, not counted as a "
          "session)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of: {', '.join(WORKLOADS)}")
    args = ap.parse_args()
    rows = run_session_bench(args.repeats, args.iterations,
                             say=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True),
                             workloads=tuple(w.strip() for w in args.workloads.split(",")))
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
