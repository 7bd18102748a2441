"""The peer table (issue 15): every runtime edgeprobe can lower to, on the same models, in one run.

MobileNetV2, ResNet18 and EfficientNet-B0 (torchvision, random init: latency only; fidelity is
scored on real weights elsewhere) at batch 1, 224x224, at 1 and 2 threads, for each cell: ExecuTorch
XNNPACK fp32 / fp16 / int8 (native runner), ONNX Runtime fp32, OpenVINO fp32 / int8 (NNCF), ncnn fp32,
LiteRT fp32 (Python runner; each launch its own process). A cell that cannot be built here (a runtime
not installed, a converter that fails) is a row with its reason.

Cells are interleaved: each round measures every (model, threads, cell) once in a shuffled order
(seeded), and a cell's p50 is the median of its iterations pooled over the rounds. Beside each p50:
the FLOPs it implies per second (torch's FlopCounterMode count of the fp32 model: one multiply-add =
2 FLOPs) against this machine's peak measured in the same run, before and after the cells: the fp32
FMA throughput of this CPU (benchmarks/fma_peak/: independent FMA chains on its widest vectors, at
that thread count), the bound no kernel doing the model's multiplications can pass, and, for
reference, torch's best sgemm 2048^3 (MKL, which on AMD CPUs runs well below that bound). A cell
whose fp32 arithmetic would run above the FMA peak is refused, its number not printed: it is a bug
to explain (or an algorithm that does fewer multiplications, such as Winograd convolution, which the
row then has to show), not a result. The int8 and fp16 cells are checked against the same peak times
the lanes they gain (4 for int8 dot products, 2 for fp16): a bound, not a measurement. The busiest other-process CPU use seen
during a cell's launches (/proc/stat, in cores) flags results measured under load.

    .venv/bin/python benchmarks/peers.py [--models mobilenet_v2,resnet18,efficientnet_b0]
                                         [--threads 1,2] [--rounds 3] [--iterations 20] [--warmup 3]
                                         [--cells pte-fp32,pte-fp16,pte-int8,onnx,openvino,openvino-int8,ncnn,tflite]

Prints Markdown (paste into docs/benchmarks.md with the command line).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from edgeprobe import compress
from edgeprobe.devices import default_runner
from edgeprobe.models import load_model
from edgeprobe.session import MeasureConfig, open_session
from edgeprobe.versions import target_versions, tool_versions

# cell -> (format, recipe, lanes gained over fp32 for the physics bound)
CELLS = {"pte-fp32": ("pte", "fp32", 1), "pte-fp16": ("pte", "fp16", 2), "pte-int8": ("pte", "int8", 4),
         "onnx": ("onnx", "fp32", 1), "openvino": ("openvino", "fp32", 1), "openvino-int8": ("openvino", "int8", 4),
         "ncnn": ("ncnn", "fp32", 1), "tflite": ("tflite", "fp32", 1)}
LOADED_OTHERS_CORES = 0.25


def sgemm_gflops(threads: int, n: int = 2048, runs: int = 10) -> float:
    """The best of ``runs`` torch sgemms n^3 at ``threads`` (MKL here), in GFLOP/s."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(before)
    return 2 * n ** 3 / best / 1e9


def fma_gflops(threads: int) -> float:
    """This CPU's fp32 FMA throughput at ``threads`` (benchmarks/fma_peak/fma_peak.cpp, built here)."""
    import json
    import subprocess
    from pathlib import Path

    src = Path(__file__).resolve().parent / "fma_peak" / "fma_peak.cpp"
    exe = Path(__file__).resolve().parent.parent / "build" / "fma_peak"
    if not exe.is_file() or exe.stat().st_mtime < src.stat().st_mtime:
        exe.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["g++", "-O2", "-march=native", "-pthread", "-o", str(exe), str(src)], check=True)
    return float(json.loads(subprocess.run([str(exe), str(threads)], capture_output=True, text=True,
                                           check=True).stdout)["gflops"])


def model_gflop(spec: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        spec.module.eval()(*spec.example_inputs)
    return counter.get_total_flops() / 1e9


@dataclass
class Cell:
    model: str
    name: str
    threads: int
    artifact: Any = None
    error: Optional[str] = None
    samples_ns: list = field(default_factory=list)
    others_cores: Optional[float] = None
    threads_used: Optional[int] = None
    runtime_version: Optional[str] = None


def build(model: str, names: list[str], say) -> tuple[Any, dict[str, Any]]:
    spec = load_model(model)
    ctx = compress.Context(example_inputs=spec.example_inputs, log=lambda _m: None)  # random calibration: latency only
    out: dict[str, Any] = {}
    for name in names:
        fmt, recipe, _ = CELLS[name]
        say(f"building {model} {name}")
        try:
            _c, _s, art = compress.apply_and_lower(spec, recipe, ctx, module=spec.module.eval(), format=fmt)
            out[name] = art
        except Exception as exc:  # noqa: BLE001 - a cell that cannot be built is a row with its reason
            out[name] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
    return spec, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mobilenet_v2,resnet18,efficientnet_b0")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    names = [c for c in args.cells.split(",") if c]
    for c in names:
        if c not in CELLS:
            ap.error(f"unknown cell {c!r}; choose from {', '.join(CELLS)}")
    say = lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)  # noqa: E731
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# Peer runtimes\n\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
          f"started {started}, load average {os.getloadavg()[0]:.2f}\n")
    print(f"versions: {tool_versions()} "
          f"{ {k: v for t in ('onnxruntime', 'openvino', 'ncnn', 'litert') for k, v in target_versions(t).items()} }\n")
    peak_before = {t: fma_gflops(t) for t in threads}
    sgemm_before = {t: sgemm_gflops(t) for t in threads}

    specs, cells = {}, []
    for model in args.models.split(","):
        spec, arts = build(model, names, say)
        specs[model] = (spec, model_gflop(spec))
        for t in threads:
            for name in names:
                a = arts[name]
                cells.append(Cell(model, name, t, artifact=None if isinstance(a, str) else a,
                                  error=a if isinstance(a, str) else None))
    rng = random.Random(args.seed)
    todo = [c for c in cells if c.artifact is not None]
    sessions: dict[str, Any] = {}
    try:
        for rnd in range(args.rounds):
            order = todo[:]
            rng.shuffle(order)
            for n, c in enumerate(order, 1):
                runner = default_runner(c.artifact.manifest.format)
                if runner not in sessions:
                    sessions[runner] = open_session("local", runner=runner)
                say(f"round {rnd + 1}/{args.rounds} {n}/{len(order)}: {c.model} {c.name} {c.threads}t")
                r = sessions[runner].measure(c.artifact, MeasureConfig(warmup=args.warmup, iterations=args.iterations,
                                                                       threads=c.threads))
                if not r.ok:
                    c.error = f"{r.run.error.code}: {r.run.error.message[:160]}" if r.run.error else "run failed"
                    continue
                c.samples_ns.extend(r.run.timing.iteration_ns)
                c.threads_used = r.run.config.threads_used
                c.runtime_version = r.run.runner.runtime_version
                load = r.device_state.cpu_load if r.device_state else None
                if load is not None and load.available and load.others_cores is not None:
                    c.others_cores = max(c.others_cores or 0.0, load.others_cores)
    finally:
        for s in sessions.values():
            s.close()
    peak_after = {t: fma_gflops(t) for t in threads}
    sgemm_after = {t: sgemm_gflops(t) for t in threads}
    peak = {t: max(peak_before[t], peak_after[t]) for t in threads}

    print("Peak, before / after the cells: fp32 FMA throughput (benchmarks/fma_peak) "
          + "; ".join(f"{t} thread{'s' if t > 1 else ''}: {peak_before[t]:.0f} / {peak_after[t]:.0f} GFLOP/s"
                      for t in threads)
          + "; torch sgemm 2048^3 (best of 10) "
          + "; ".join(f"{t}: {sgemm_before[t]:.0f} / {sgemm_after[t]:.0f}" for t in threads) + " GFLOP/s\n")
    print(f"{args.rounds} interleaved rounds x {args.iterations} iterations (warm-up {args.warmup}) per cell; "
          f"p50 over the pooled iterations.\n")
    print("| model | GFLOP | threads | cell | p50 ms | GFLOP/s implied | % of peak | threads used | runtime | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    refused = 0
    for c in cells:
        spec, gflop = specs[c.model]
        head = f"| {c.model} | {gflop:.3f} | {c.threads} | {c.name} |"
        if c.error or not c.samples_ns:
            print(f"{head} — | — | — | — | — | {c.error or 'not measured'} |")
            continue
        p50 = statistics.median(c.samples_ns) / 1e6
        implied = gflop / (p50 / 1e3)
        bound = peak[c.threads] * CELLS[c.name][2]
        loaded = c.others_cores is not None and c.others_cores > LOADED_OTHERS_CORES
        note = f"under load: others used up to {c.others_cores:.2f} cores" if loaded else ""
        if implied > bound:
            refused += 1
            print(f"{head} REFUSED | {implied:.0f} | {100 * implied / peak[c.threads]:.0f} | {c.threads_used} | "
                  f"{c.runtime_version} | above the measured bound {bound:.0f} GFLOP/s: a bug (or fewer "
                  f"multiplications, e.g. Winograd) to explain {note} |")
            continue
        print(f"{head} {p50:.2f} | {implied:.0f} | {100 * implied / peak[c.threads]:.0f} | {c.threads_used} | "
              f"{c.runtime_version} | {note} |")
    fastest: dict[tuple[str, int], float] = {}
    for c in cells:
        if c.samples_ns and CELLS[c.name][1] == "fp32" and not c.name.startswith("pte"):
            p50 = statistics.median(c.samples_ns) / 1e6
            key = (c.model, c.threads)
            fastest[key] = min(fastest.get(key, p50), p50)
    print("\nExecuTorch cells ÷ the fastest fp32 peer runtime (ONNX Runtime, OpenVINO, ncnn, LiteRT) at the same "
          "threads, same run:\n")
    print("| model | threads | fastest fp32 peer ms | pte fp32 ÷ | pte fp16 ÷ | pte int8 ÷ | openvino int8 ÷ |")
    print("|---|---|---|---|---|---|---|")
    by = {(c.model, c.threads, c.name): statistics.median(c.samples_ns) / 1e6 for c in cells if c.samples_ns}
    for (model, t), peer in fastest.items():
        ratios = [by.get((model, t, n)) for n in ("pte-fp32", "pte-fp16", "pte-int8", "openvino-int8")]
        print(f"| {model} | {t} | {peer:.2f} | " + " | ".join("—" if r is None else f"{r / peer:.2f}" for r in ratios)
              + " |")
    print(f"\nfinished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
