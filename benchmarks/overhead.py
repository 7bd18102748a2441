"""Runner overhead against a clean baseline: the native runner's p50 vs the smallest C++ program that
times ``Method::execute`` on the same .pte (benchmarks/execute_loop/, built here against the same
wheel libraries), each in a process of its own, launches interleaved (round r: runner then loop on odd
rounds, loop then runner on even ones). Goal: native ÷ loop within ±2 %.

Issue 15 found the old baseline unfair: an in-process ``executorch.runtime`` loop driven from Python
is the slow side (native ÷ in-process 0.889 at 1 thread on MobileNetV2), so a runner that adds
overhead could still look faster than its baseline.

    .venv/bin/python benchmarks/overhead.py [--models mobilenet_v2,resnet18,efficientnet_b0]
                                            [--threads 1,2] [--rounds 5] [--iterations 30] [--warmup 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import edgeprobe
from edgeprobe.native import _cmake, executorch_cmake_dir

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent / "build" / "execute_loop"


def build_loop(say) -> Path:
    exe = BUILD / "execute_loop"
    sources = [HERE / "execute_loop" / "main.cpp", HERE / "execute_loop" / "CMakeLists.txt"]
    if exe.is_file() and all(exe.stat().st_mtime > s.stat().st_mtime for s in sources):
        return exe
    say(f"building {exe}")
    subprocess.run([_cmake(), "-S", str(HERE / "execute_loop"), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release",
                    f"-Dexecutorch_DIR={executorch_cmake_dir()}"], check=True, capture_output=True)
    subprocess.run([_cmake(), "--build", str(BUILD), "-j", str(os.cpu_count() or 1)], check=True, capture_output=True)
    return exe


def loop_samples(exe: Path, pte: Path, threads: int, warmup: int, iterations: int) -> tuple[list[int], int]:
    p = subprocess.run([str(exe), str(pte), str(threads), str(warmup), str(iterations)], capture_output=True,
                       text=True, timeout=600, check=True)
    rec = json.loads(p.stdout.strip().splitlines()[-1])
    return rec["iteration_ns"], rec["threads"]


def run_overhead(models: list[str], threads: list[int], rounds: int, iterations: int, warmup: int, say) -> list[dict]:
    exe = build_loop(say)
    rows = []
    for name in models:
        art = edgeprobe.export(name)
        for t in threads:
            native: list[int] = []
            loop: list[int] = []
            loop_threads = None
            for r in range(rounds):
                order = ("native", "loop") if r % 2 == 0 else ("loop", "native")
                for side in order:
                    say(f"{name} {t}t round {r + 1}/{rounds}: {side}")
                    if side == "native":
                        res = edgeprobe.bench(art, iterations=iterations, warmup=warmup, threads=t)
                        if not res.ok:
                            raise SystemExit(f"native runner failed on {name}: {res.run.error}")
                        native.extend(res.run.timing.iteration_ns)
                    else:
                        ns, loop_threads = loop_samples(exe, art.model_path, t, warmup, iterations)
                        loop.extend(ns)
            n50, l50 = statistics.median(native) / 1e6, statistics.median(loop) / 1e6
            rows.append({"model": name, "threads": t, "native_p50_ms": n50, "loop_p50_ms": l50,
                         "ratio": n50 / l50, "loop_threads": loop_threads})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| model | threads | native runner p50 ms | C++ execute loop p50 ms | native ÷ loop | within ±2 % |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ok = "yes" if abs(r["ratio"] - 1) <= 0.02 else "no"
        print(f"| {r['model']} | {r['threads']} | {r['native_p50_ms']:.3f} | {r['loop_p50_ms']:.3f} | "
              f"{r['ratio']:.3f} | {ok} |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mobilenet_v2,resnet18,efficientnet_b0")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    say = lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)  # noqa: E731
    rows = run_overhead(args.models.split(","), [int(t) for t in args.threads.split(",")], args.rounds,
                        args.iterations, args.warmup, say)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}\n")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
