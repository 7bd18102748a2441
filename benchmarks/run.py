"""`make bench`: speed measurements as ratios against baselines measured in the same run.

1. Runner overhead: the native runner's p50 vs the smallest C++ ``Method::execute`` loop in a process
   of its own (benchmarks/overhead.py; same .pte, same thread count, launches interleaved). Goal: within +-2 %.
2. MobileNetV2, ResNet18, EfficientNet-B0 on this CPU: edgeprobe's .pte (XNNPACK, native runner)
   vs torch eager (in-process) vs TorchScript-Lite (.ptl, Python runner), at 1 and 2 threads.
3. ADB push throughput: edgeprobe's ADB transport vs Debian's `adb push` to the same test adbd
   (benchmarks/push.py); ``--only push`` runs this section alone.
4. Compression sweep (benchmarks/sweep.py), ``--only sweep``.
5. Split planning time on a synthetic 1000-node DAG (benchmarks/split_planning.py), ``--only split``.
6. Split end to end under 3G/4G/Wi-Fi, MobileNetV2 and ResNet18 (benchmarks/split_e2e.py),
   ``--only split-e2e``; the CUDA tails (benchmarks/split_gpu_tails.py) run on a GPU machine.
7. Command start-up: `edgeprobe --help`, `devices`, `show`, `recipes` (benchmarks/startup.py),
   ``--only startup``.
8. The shared measurement session: a sweep of 3 recipes and a `split --confirm 3` over the test
   adbd, one session per command vs a session per measurement, interleaved
   (benchmarks/session.py), ``--only session``.
9. The device farm (issue 13): scheduler overhead per job on 1000 mock-transport jobs, and a farm
   run vs the same 18 cells one by one with ``api.bench`` on local, a test adbd and a TCP runner,
   interleaved (benchmarks/farm.py), ``--only farm``.
9b. A farm on Ray (issue 17): per-job overhead through Ray actors on another host vs the local
    executor on the same mock jobs, and how long a SIGKILLed host takes to notice and requeue, on a
    cluster in network namespaces (benchmarks/farm_ray.py; root), ``--only farm-ray``.
10. Regression-gate cost (issue 14): launches ``api.gate`` needs for a verdict on local, identical
    artifacts vs a real 10 % slowdown (benchmarks/gate.py), ``--only gate``.
11. Peer runtimes (issue 15): every runtime edgeprobe lowers to, MobileNetV2/ResNet18/EfficientNet-B0 at
    1 and 2 threads, interleaved, each p50 checked against the sgemm peak measured in the same run
    (benchmarks/peers.py), and the hottest XNNPACK loop of ResNet18 (benchmarks/hot_loop.py), ``--only peers``.

Prints a Markdown report (paste into docs/benchmarks.md with the command line).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore")
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

import torch  # noqa: E402

import edgeprobe  # noqa: E402
from edgeprobe.models import load_model  # noqa: E402
from edgeprobe.versions import tool_versions  # noqa: E402


def p50_ms(samples_ns) -> float:
    return statistics.median(samples_ns) / 1e6


def eager_p50(spec, threads: int, warmup: int, iterations: int) -> float:
    torch.set_num_threads(threads)
    samples = []
    with torch.inference_mode():
        for _ in range(warmup):
            spec.module(*spec.example_inputs)
        for _ in range(iterations):
            t0 = time.monotonic_ns()
            spec.module(*spec.example_inputs)
            samples.append(time.monotonic_ns() - t0)
    return p50_ms(samples)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mobilenet_v2,resnet18,efficientnet_b0")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--only", choices=["overhead", "push", "sweep", "split", "split-e2e", "startup", "session",
                                       "farm", "farm-ray", "gate", "peers"],
                    help="run one section only (overhead: sections 1 and 2)")
    ap.add_argument("--push-size-mb", type=float, default=50)
    ap.add_argument("--push-repeats", type=int, default=3)
    args = ap.parse_args()
    if args.only and args.only != "overhead":
        print(f"# edgeprobe benchmarks\n\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
              f"{platform.platform()}\n")
        return {"push": push_section, "sweep": sweep_section, "split": split_section,
                "split-e2e": split_e2e_section, "startup": startup_section,
                "session": session_section, "farm": farm_section, "farm-ray": farm_ray_section,
                "gate": gate_section,
                "peers": peers_section}[args.only](args)
    threads_list = [int(t) for t in args.threads.split(",")]
    models = args.models.split(",")
    say = lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)  # noqa: E731

    print(f"# edgeprobe benchmarks\n\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.platform()}\n\nversions: {tool_versions()}\n")
    print(f"iterations {args.iterations}, warm-up {args.warmup}; every number is a p50 of that run.\n")

    # 1. runner overhead, against the smallest C++ Method::execute loop (benchmarks/overhead.py)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from overhead import print_table as print_overhead
    from overhead import run_overhead

    print("## Runner overhead (native runner vs a C++ Method::execute loop, same .pte, own processes)\n")
    rows = run_overhead(models, threads_list, 5, args.iterations, args.warmup, say)
    print_overhead(rows)
    rows = [(r["model"], r["threads"], r["native_p50_ms"], r["loop_p50_ms"]) for r in rows]

    # 2. edgeprobe .pte vs eager vs TorchScript-Lite
    print("\n## .pte (XNNPACK, native runner) vs torch eager vs TorchScript-Lite (.ptl, Python runner)\n")
    print("| model | threads | pte p50 ms | eager p50 ms | ptl p50 ms | eager/pte | ptl/pte |")
    print("|---|---|---|---|---|---|---|")
    native_by = {(n, t): v for n, t, v, _ in rows}
    for name in models:
        spec = load_model(name)
        ptl = edgeprobe.export(name, format="ptl", progress=say)
        for th in threads_list:
            pte_ms = native_by.get((name, th))
            eager = eager_p50(spec, th, args.warmup, args.iterations)
            r = edgeprobe.bench(ptl, iterations=args.iterations, warmup=args.warmup, threads=th)
            ptl_ms = r.stats.p50_ms if r.ok else None
            if pte_ms is None or ptl_ms is None:
                print(f"| {name} | {th} | {pte_ms} | {eager:.3f} | {ptl_ms} | | |")
                continue
            print(f"| {name} | {th} | {pte_ms:.3f} | {eager:.3f} | {ptl_ms:.3f} | {eager / pte_ms:.2f} | "
                  f"{ptl_ms / pte_ms:.2f} |", flush=True)

    if args.only == "overhead":
        return 0
    # 3. ADB push throughput
    push_section(args)
    # 4. compression sweep
    sweep_section(args)
    # 5. split planning
    split_section(args)
    # 6. split end to end under the three link profiles (needs root: namespaces, TUN)
    split_e2e_section(args)
    # 7. command start-up
    startup_section(args)
    # 8. the shared measurement session
    session_section(args)
    # 9. the device farm, and on Ray
    farm_section(args)
    farm_ray_section(args)
    # 10. the regression gate's cost
    gate_section(args)
    # 11. peer runtimes
    return peers_section(args)


def peers_section(args) -> int:
    """The peer-runtime table and the hottest XNNPACK loop (benchmarks/peers.py, benchmarks/hot_loop.py),
    each in its own process (the runtimes' thread pools must not share one with this one's torch)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.stdout.flush()
    rc = subprocess.run([sys.executable, os.path.join(here, "peers.py")]).returncode
    sys.stdout.flush()
    subprocess.run([sys.executable, os.path.join(here, "hot_loop.py")])
    return rc


def split_e2e_section(args) -> int:
    """MobileNetV2 and ResNet18 split end to end under 3G/4G/Wi-Fi (benchmarks/split_e2e.py): regret and
    median prediction error against their goals. Long: every candidate is run (about an hour here)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from split_e2e import run_split_e2e_bench

    print("\n## Split end to end under 3G/4G/Wi-Fi (MobileNetV2, ResNet18; every candidate measured)\n")
    run_split_e2e_bench(say=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True))
    return 0


def startup_section(args) -> int:
    """Median wall time of the commands that must not import torch (benchmarks/startup.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from startup import print_table, run_startup_bench

    print("\n## Command start-up (median of 5 fresh processes)\n")
    print_table(run_startup_bench(5, say=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)), 5)
    return 0


def session_section(args) -> int:
    """One measurement session per command vs one per measurement, over the test adbd (benchmarks/session.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from session import print_table, run_session_bench

    print("\n## Shared measurement session over the test adbd (interleaved, median of 3)\n")
    print_table(run_session_bench(3, 5, say=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)))
    return 0


def farm_ray_section(args) -> int:
    """A farm on Ray (benchmarks/farm_ray.py), in its own process: it builds a cluster in network
    namespaces (root); without them the section says why and is skipped."""
    print("\n## Farm on Ray (benchmarks/farm_ray.py --repeats 3)\n", flush=True)
    p = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "farm_ray.py"),
                        "--repeats", "3"], capture_output=True, text=True)
    print(p.stdout if p.returncode == 0 else f"not measured: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    return 0


def farm_section(args) -> int:
    """Scheduler overhead per job on mock devices, and farm vs one-by-one api.bench (benchmarks/farm.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from farm import print_overhead_table, print_vs_table, run_overhead_bench, run_vs_bench

    say = lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)  # noqa: E731
    print("\n## Device farm (scheduler overhead on 1000 mock jobs; farm vs one-by-one api.bench)\n")
    print("### Scheduler overhead per job (mock devices, SQLite in a temp dir)\n")
    print_overhead_table(run_overhead_bench(1000, (1, 4), repeats=3, say=say))
    print("\n### Farm vs one by one with api.bench (local, test adbd, TCP runner)\n")
    print_vs_table(run_vs_bench(repeats=2, iterations=5, warmup=1, say=say))
    return 0


def gate_section(args) -> int:
    """Launches the regression gate needs for a verdict: identical vs a real 10 % slowdown (benchmarks/gate.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gate import print_tables, run_gate_bench

    print("\n## Regression gate cost on local (identical artifacts vs a real 10 % slowdown)\n")
    print_tables(run_gate_bench(repeats=5, iterations=20, warmup=3,
                                say=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)))
    return 0


def split_section(args) -> int:
    """Planning time of the split planner on a synthetic 1000-node DAG (benchmarks/split_planning.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from split_planning import GOAL_MS, main as planning

    print("\n## Split planning time (synthetic 1000-node DAG, latency objective)\n")
    print("```")
    ms = planning(["--check"])
    print("```")
    print(f"\nmedian {ms:.1f} ms; ratio to the {GOAL_MS:.0f} ms goal: {ms / GOAL_MS:.2f}")
    return 0


def sweep_section(args) -> int:
    """Recipes on MobileNetV2 and ResNet18 on local, as ratios to fp32 (benchmarks/sweep.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from sweep import run_sweep_bench

    print("\n## Compression sweep on local (ratios to the fp32 row of the same run)\n")
    run_sweep_bench(iterations=args.iterations, warmup=args.warmup,
                    say=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True))
    return 0


def push_section(args) -> int:
    """edgeprobe's ADB push vs Debian's `adb push`, same test adbd (benchmarks/push.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from push import print_table, run_push_bench

    print("\n## ADB push throughput (edgeprobe AdbTransport.push vs `adb push`, same test adbd)\n")
    if shutil.which("adb") is None:
        print("skipped: Debian's adb client is not installed (apt-get install adb)")
        return 0
    rows = run_push_bench(args.push_size_mb, repeats=args.push_repeats,
                          log=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True))
    print_table(rows, args.push_size_mb, args.push_repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
