"""Split computing end to end under the three link profiles of issue 5, on MobileNetV2 and ResNet18:
regret (the chosen split's measured e2e p50 / the best measured over every candidate; goal <= 1.05)
and the median |prediction error| over the candidates (goal <= 10 %).

Setup: two network namespaces joined by the userspace link emulator (tests/linkemu.py via
tests/netns.py: this kernel has no sch_netem). `edgeprobe serve` (on its own core: --cpus) runs in one namespace,
and this script re-runs itself in the other (``--worker``) as the device side, on the other cores: it measures each
model's per-operator device costs once (ETDump on `local`), then for every profile switches the
link's shaping (rate both ways, RTT/2 delay each way) and runs ``plan_split(..., verify=True)``:
every candidate cut lowered, its head run by the split client, its tail on the server, over the
shaped link. The activations cross in int8 (per-tensor scale; the SQNR of each candidate's final
output against the unsplit model is in the JSON), which keeps the exhaustive sweep of ~150
MobileNetV2 cuts at 1.1 Mbit/s to minutes rather than an hour.

Weights are random (BatchNorm statistics re-estimated, see benchmarks/sweep.py); latency does not
depend on them. Needs root (namespaces, TUN); prints why it skipped otherwise.

    python benchmarks/split_e2e.py [--models resnet18] [--profiles 4G] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
PROFILES = (("3G", 1.1, 40.0), ("4G", 5.85, 30.0), ("Wi-Fi", 18.88, 5.0))  # (name, Mbit/s both ways, RTT ms)
TOKEN = "split-e2e-bench"
REGRET_GOAL, ERROR_GOAL = 1.05, 0.10


def _worker(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(TESTS))
    sys.path.insert(0, str(HERE))
    import linkemu
    from sweep import bn_calibrated

    from edgeprobe.models import load_model
    from edgeprobe.split import plan_split
    from edgeprobe.split.colocation import pinned as _pinned
    from edgeprobe.split.costs import measure_device_costs
    from edgeprobe.split.graph import op_graph

    def say(m: str) -> None:
        print(f"  .. {m}", file=sys.stderr, flush=True)

    profiles = [p for p in PROFILES if p[0] in args.profiles]
    results = []
    for name in args.models:
        module = bn_calibrated(name)
        spec = load_model(module, input_shape=(1, 3, 224, 224))
        og = op_graph(spec.module, spec.example_inputs)
        t0 = time.monotonic()
        say(f"{name}: per-operator device costs (ETDump, once for all profiles)")
        # where plan_split will put the device half: off the server's core (`serve --cpus`, below)
        cores = sorted(os.sched_getaffinity(0))
        pin = cores[:-1] if len(cores) > 1 else None
        with _pinned(pin):
            dc = measure_device_costs(og.exported, device="local", iterations=args.iterations + 3,
                                      warmup=args.warmup, node_names={n.name for n in og.nodes},
                                      threads=len(pin) if pin else 0, progress=say)
        for prof, rate, rtt in profiles:
            linkemu.set_shaping(args.control, rate, rtt / 2)
            say(f"{name} {prof}: {rate} Mbit/s, RTT {rtt} ms; planning and verifying every candidate")
            t1 = time.monotonic()
            plan = plan_split(module, input_shape=(1, 3, 224, 224), server=args.server,
                              device_server=args.device_server, token=TOKEN,
                              uplink=f"{rate}mbit", downlink=f"{rate}mbit", rtt=f"{rtt}ms", encoding=args.encoding,
                              iterations=args.iterations, warmup=args.warmup, verify=True, device_costs=dc,
                              progress=say)
            results.append({"model": name, "profile": prof, "rate_mbit": rate, "rtt_ms": rtt,
                            "seconds": time.monotonic() - t1, "plan": plan.to_dict()})
            Path(args.out).write_text(json.dumps(results, indent=1))  # after each profile: nothing lost
        say(f"{name}: {time.monotonic() - t0:.0f} s")
    return 0


def _summary(results: list[dict]) -> list[str]:
    lines = ["| model | profile | candidates | chosen (after confirmation) | chosen p50 ms | best measured | best p50 ms "
             "| regret | median abs. prediction error | confirmed heads: median abs. error | failed | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r["plan"]
        rows = p["candidates"]
        ok = [c for c in rows if c.get("measured_e2e_p50_ms") is not None]
        best = min(ok, key=lambda c: c["measured_e2e_p50_ms"]) if ok else None
        conf = [abs(c["confirmed_total_ms"] - c["measured_e2e_p50_ms"]) / c["measured_e2e_p50_ms"]
                for c in ok if c.get("confirmed_total_ms") is not None]
        med = p.get("median_abs_prediction_error")
        lines.append(
            f"| {r['model']} | {r['profile']} {r['rate_mbit']} Mbit/s {r['rtt_ms']:g} ms | {len(rows)} | "
            f"{p['chosen']['label']} | {p['chosen'].get('measured_e2e_p50_ms') or float('nan'):.1f} | "
            f"{best['label'] if best else '-'} | {best['measured_e2e_p50_ms'] if best else float('nan'):.1f} | "
            f"{p['regret'] if p['regret'] is not None else float('nan'):.3f} | "
            f"{100 * med if med is not None else float('nan'):.1f} % | "
            f"{100 * statistics.median(conf) if conf else float('nan'):.1f} % ({len(conf)}) | "
            f"{len(rows) - len(ok)} | {r['seconds'] / 60:.1f} |")
    regrets = [r["plan"]["regret"] for r in results if r["plan"]["regret"] is not None]
    errs = [r["plan"]["median_abs_prediction_error"] for r in results
            if r["plan"]["median_abs_prediction_error"] is not None]
    if regrets and errs:
        lines.append("")
        lines.append(f"worst regret {max(regrets):.3f} (goal <= {REGRET_GOAL}: ratio to goal "
                     f"{max(regrets) / REGRET_GOAL:.3f}); worst median |prediction error| {100 * max(errs):.1f} % "
                     f"(goal <= {100 * ERROR_GOAL:.0f} %: ratio to goal {max(errs) / ERROR_GOAL:.2f})")
    return lines


def run_split_e2e_bench(models=("mobilenet_v2", "resnet18"), profiles=tuple(p[0] for p in PROFILES),
                        encoding: str = "int8", iterations: int = 2, warmup: int = 1,
                        out: str = "split_e2e.json", say=lambda m: None) -> list[dict]:
    sys.path.insert(0, str(TESTS))
    from netns import emulated_link, emulation_available, first_line

    ok, why = emulation_available()
    if not ok:
        print(f"skipped: {why}")
        return []
    out_path = Path(out).resolve()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("EDGEPROBE_TOKEN", None)
    # The tail programs (up to 45 MB each) are loaded over an unshaped side channel, as a deployment puts
    # them on its server ahead of time; the split client reaches the server over the emulated link.
    with emulated_link(prefix="epbs", side_channel=True) as link, \
            open(out_path.with_suffix(".serve.log"), "w") as log:
        cores = sorted(os.sched_getaffinity(0))  # the server on its own core; the device half on the others
        keep = ["--cpus", str(cores[-1])] if len(cores) > 1 else ["--threads", "1"]
        server = link.popen(link.ns_a, [sys.executable, "-m", "edgeprobe", "serve", "--host", "0.0.0.0", "--port",
                                        "0", "--token", TOKEN, *keep],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        port = json.loads(first_line(server, 120))["listening"].rsplit(":", 1)[1]
        say(f"server in {link.ns_a}: {link.addr_a}:{port} over the link, {link.side_a}:{port} unshaped; "
            f"device side in {link.ns_b}")
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--server", f"tcp:{link.side_a}:{port}",
                "--device-server", f"tcp:{link.addr_a}:{port}",
                "--control", link.control, "--out", str(out_path), "--encoding", encoding,
                "--iterations", str(iterations), "--warmup", str(warmup), "--models", *models,
                "--profiles", *profiles]
        p = link.run(link.ns_b, argv, env=env, timeout=6 * 3600)
        if p.returncode != 0:
            print(f"the worker failed with exit code {p.returncode} (its log is above)")
    results = json.loads(out_path.read_text()) if out_path.exists() else []
    print("\n".join(_summary(results)))
    print(f"\nlink emulator counters: {link.counters}; every plan: {out_path}")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"])
    ap.add_argument("--profiles", nargs="+", default=[p[0] for p in PROFILES])
    ap.add_argument("--encoding", default="int8", choices=["fp32", "fp16", "int8"])
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", dest="out", default="split_e2e.json")
    ap.add_argument("--out", dest="out")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--device-server", help=argparse.SUPPRESS)
    ap.add_argument("--control", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
    run_split_e2e_bench(args.models, tuple(args.profiles), args.encoding, args.iterations, args.warmup, args.out,
                        say=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
