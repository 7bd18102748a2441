"""Start-up time of the commands that need no model: median wall time of N runs each, and whether torch was imported.

    python benchmarks/startup.py [--runs 5] [--record result.json]

``devices`` runs with ``--no-usb`` and zeroconf on 127.0.0.1 only; it still browses for 2 s, which
is in its figure. Without ``--record`` one is made first (``edgeprobe bench tiny_cnn``, not timed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

EDGEPROBE = [sys.executable, "-m", "edgeprobe"]
HEAVY = ("torch", "executorch")


def commands(record: str) -> dict[str, list[str]]:
    return {"--help": ["--help"], "devices": ["devices", "--no-usb"], "show RECORD": ["show", record],
            "recipes": ["recipes"]}


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["EDGEPROBE_ZEROCONF_INTERFACES"] = "127.0.0.1"  # no multicast on every interface
    env.pop("EDGEPROBE_ADB_ADDRESSES", None)
    env.setdefault("COLUMNS", "120")
    return env


def wall_s(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(EDGEPROBE + argv, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"edgeprobe {' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return took


def heavy_imports(argv: list[str], env: dict[str, str]) -> tuple[list[str], float]:
    """The heavy top-level packages ``python -X importtime`` saw imported, and the cumulative
    import time (s) of everything."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgeprobe", *argv], env=env,
                       capture_output=True, text=True)
    seen, total_us = set(), 0
    for line in p.stderr.splitlines():
        parts = [x.strip() for x in line[len("import time:"):].split("|")]
        if not line.startswith("import time:") or len(parts) != 3 or not parts[0].isdigit():
            continue  # the header line, or the command's own output
        total_us += int(parts[0])  # self times add up to the whole
        if parts[2].split(".")[0] in HEAVY:
            seen.add(parts[2].split(".")[0])
    return sorted(seen), total_us / 1e6


def make_record(dest: Path, env: dict[str, str], say: Callable[[str], None]) -> str:
    say("making a record to show: edgeprobe bench tiny_cnn")
    base = ["bench", "tiny_cnn", "--iterations", "3", "--warmup", "1", "--min-seconds", "0", "--json", str(dest)]
    for extra in ([], ["--runner", "python"]):
        if subprocess.run(EDGEPROBE + base + extra, env=env, capture_output=True).returncode in (0, 1) and dest.exists():
            return str(dest)
    raise SystemExit("could not make a record to show; pass --record result.json")


def run_startup_bench(runs: int = 5, record: Optional[str] = None,
                      say: Callable[[str], None] = lambda m: None) -> list[tuple[str, float, list[str], float]]:
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        record = record or make_record(Path(tmp) / "result.json", env, say)
        rows = []
        for label, argv in commands(record).items():
            say(f"edgeprobe {label} x {runs}")
            times = [wall_s(argv, env) for _ in range(runs)]
            heavy, imports_s = heavy_imports(argv, env)
            rows.append((label, statistics.median(times), heavy, imports_s))
    return rows


def print_table(rows, runs: int) -> None:
    print(f"| command | median wall s (N={runs}) | import time s (-X importtime) | torch/executorch imported |")
    print("|---|---|---|---|")
    for label, median, heavy, imports_s in rows:
        print(f"| edgeprobe {label} | {median:.3f} | {imports_s:.3f} | {', '.join(heavy) or 'no'} |")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--record", help="a result.json for `show` (default: one made with bench tiny_cnn)")
    args = ap.parse_args(argv)
    rows = run_startup_bench(args.runs, args.record, say=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True))
    print_table(rows, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
