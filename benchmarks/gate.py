"""Regression-gate cost (issue 14): how many launches ``edgeprobe.api.gate`` needs to reach a
verdict on ``local``, for identical artifacts and for a real 10 % slowdown.

The model pair differs in compute by a known ratio, so the regression is measured, not simulated:
an ``nn.Sequential`` of ``--layers`` (10) blocks ``nn.Linear(W, W)`` + ReLU (W = ``--width``, 512)
on a ``(--batch, W)`` input (128 rows, so a layer is a GEMM and one inference takes ~2.6 ms on one
thread here; a batch of 1 is a GEMV of ~0.3 ms, too short to time well). Cases, each a
``api.gate(baseline, candidate, device="local", ...)`` on artifacts exported once beforehand:

* ``identical``: the baseline against itself (the same artifact directory): the right verdict is
  SAME on latency and ``pass``;
* ``+10 % compute``: the candidate applies the 10th layer a second time (11 blocks, the weights
  shared), so it does 11/10 of the FLOPs with the same weights: artifact size and memory are the
  same and only latency can decide;
* ``+10 % compute and weights``: 11 distinct layers, 10 % more FLOPs *and* 10 % more bytes. The
  artifact size is a gating metric, deterministic, and +10 % is beyond the 5 % floor, so this
  case shows what the gate does when one gating metric is decided at the first comparison.

The nominal 10 % is checked against the gate's own samples: the *realized p50 ratio* is the
median of the candidate's per-launch p50s over the baseline's (``SampleComparison``
candidate_median / baseline_median), next to the Hodges-Lehmann shift the gate judged.
``--threads 1`` (the default) keeps a launch on one core: at 2 threads on this 2-core VM the
per-launch p50s are bimodal whenever anything else runs, which the gate rightly calls unstable.

Repetitions are interleaved (rep 1: each case, rep 2: each case, ...); the runner is deployed
and every artifact launched once before any gate is timed. Per case it reports the median
launches to the verdict (``len(GateRun.order)``, both sides), decided vs stopped at the cap, the
outcomes and latency verdicts, the realized ratio and the wall time per gate.

    .venv/bin/python benchmarks/gate.py [--repeats 5] [--iterations 20] [--warmup 3] [--threads 1]
                                        [--width 512] [--batch 128] [--layers 10]
                                        [--min-launches 10] [--max-launches 35]

Prints Markdown tables (paste into docs/benchmarks.md with the command line).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

Say = Callable[[str], None]
CASES = ("identical", "+10 % compute", "+10 % compute and weights")
NOMINAL = {"identical": 1.0, "+10 % compute": 1.1, "+10 % compute and weights": 1.1}


@dataclass(frozen=True)
class GateRow:
    case: str
    rep: int
    launches: int  # len(GateRun.order): both sides
    rounds: int
    decided: bool
    outcome: str
    p50_verdict: str
    p50_ratio: float | None  # candidate median of per-launch p50s / baseline's
    p50_shift: float | None  # Hodges-Lehmann relative shift
    baseline_p50_ms: float | None  # the baseline's median of per-launch p50s
    fastest_ratio: float | None  # the candidate's fastest launch p50 / the baseline's fastest
    p_value: float | None
    memory_verdict: str
    size_verdict: str
    still_open: str  # the gating metrics still UNKNOWN or unstable at the end
    unstable_reason: str | None  # why the p50 sample looked multimodal
    wall_s: float


def build_pair(layers: int, width: int, batch: int) -> tuple[Any, Any, Any, tuple]:
    """(baseline, candidate with shared weights, candidate with new weights, example inputs)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    lin = [nn.Linear(width, width) for _ in range(layers + 1)]

    def seq(blocks: list) -> nn.Module:
        return nn.Sequential(*[m for b in blocks for m in (b, nn.ReLU())])

    base = seq(lin[:layers])
    shared = seq(lin[:layers] + [lin[layers - 1]])  # the last layer applied twice: same weights
    new = seq(lin[:layers + 1])
    return base, shared, new, (torch.randn(batch, width),)


def _p50_of(comparison: Any) -> Any:
    return comparison.metric("latency_p50_ms")


def _row(case: str, rep: int, run: Any, wall_s: float) -> GateRow:
    cmp = run.comparison
    p50 = _p50_of(cmp)
    s = p50.comparison
    ratio = (s.candidate_median / s.baseline_median) if s and s.baseline_median else None
    fastest = [min(r.stats.p50_ms for r in side if r.ok and r.stats) for side in (run.baseline, run.candidate)]
    open_ = [f"{m.metric} {m.verdict}" + (" (unstable)" if m.unstable else "")
             for m in cmp.metrics if m.gating and (m.verdict == "UNKNOWN" or m.unstable)]
    return GateRow(case, rep, len(run.order), run.rounds, run.decided, cmp.outcome, p50.verdict + (
        " (unstable)" if p50.unstable else ""), ratio, s.relative_shift if s else None,
        s.baseline_median if s else None, fastest[1] / fastest[0],
        s.p_value if s else None, cmp.metric("peak_memory_mib").verdict, cmp.metric("artifact_size_bytes").verdict,
        "; ".join(open_) or "—", s.unstable_reason if s else None, wall_s)


def run_gate_bench(repeats: int = 5, iterations: int = 20, warmup: int = 3, threads: int = 1, width: int = 512,
                   batch: int = 128, layers: int = 10, min_launches: int = 10, max_launches: int = 35,
                   say: Say = lambda _m: None) -> dict:
    from edgeprobe import api

    base_m, shared_m, new_m, x = build_pair(layers, width, batch)
    say(f"exporting the pair ({layers} / {layers + 1} x Linear({width}, {width}) + ReLU, input {tuple(x[0].shape)})")
    base = api.export(base_m, example_inputs=x)
    shared = api.export(shared_m, example_inputs=x)
    new = api.export(new_m, example_inputs=x)
    pairs = {"identical": (base, base), "+10 % compute": (base, shared), "+10 % compute and weights": (base, new)}
    sizes = {"baseline": base.manifest.artifact_size_bytes, "shared": shared.manifest.artifact_size_bytes,
             "new": new.manifest.artifact_size_bytes}
    for art in (base, shared, new):  # deploy the runner, warm the page cache
        api.bench(art, iterations=iterations, warmup=warmup, threads=threads)
    load_before = os.getloadavg()
    rows: list[GateRow] = []
    t_all = time.monotonic()
    for rep in range(repeats):
        for case in CASES:
            a, b = pairs[case]
            t0 = time.monotonic()
            run = api.gate(a, b, device="local", iterations=iterations, warmup=warmup, threads=threads,
                           min_launches=min_launches, max_launches=max_launches)
            row = _row(case, rep + 1, run, time.monotonic() - t0)
            rows.append(row)
            say(f"rep {rep + 1} {case}: {row.launches} launches, {row.outcome}, p50 {row.p50_verdict}, "
                f"ratio {row.p50_ratio:.3f}, {row.wall_s:.1f} s")
    return {"rows": rows, "sizes": sizes, "load_before": load_before, "load_after": os.getloadavg(),
            "total_s": time.monotonic() - t_all, "repeats": repeats, "iterations": iterations, "warmup": warmup,
            "threads": threads, "width": width, "batch": batch, "layers": layers, "min_launches": min_launches,
            "max_launches": max_launches}


def _counts(xs: list[str]) -> str:
    return ", ".join(f"{k} ×{n}" for k, n in Counter(xs).most_common())


def _f(x: float | None, fmt: str) -> str:
    return format(x, fmt) if x is not None else "—"


def print_tables(r: dict) -> None:
    rows: list[GateRow] = r["rows"]
    print("| case | nominal ratio | median launches to verdict (min–max) | decided / at cap | outcomes | "
          "p50 verdicts | median realized p50 ratio (min–max) | median fastest-launch ratio | median wall s per gate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in CASES:
        rs = [x for x in rows if x.case == case]
        if not rs:
            continue
        n = [x.launches for x in rs]
        ratios = [x.p50_ratio for x in rs if x.p50_ratio is not None]
        rr = (f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})" if ratios else "—")
        decided = sum(x.decided for x in rs)
        print(f"| {case} | {NOMINAL[case]:.2f} | {statistics.median(n):g} ({min(n)}–{max(n)}) | {decided} / "
              f"{len(rs) - decided} | {_counts([x.outcome for x in rs])} | {_counts([x.p50_verdict for x in rs])} | "
              f"{rr} | {statistics.median(x.fastest_ratio for x in rs):.3f} | "
              f"{statistics.median(x.wall_s for x in rs):.1f} |")
    print("\nPer repetition:\n")
    print("| case | rep | launches (rounds) | decided | outcome | p50 verdict | baseline p50 ms | p50 ratio | "
          "fastest ratio | HL shift | p | memory | size | still open | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in sorted(rows, key=lambda x: (CASES.index(x.case), x.rep)):
        shift = f"{x.p50_shift * 100:+.1f} %" if x.p50_shift is not None else "—"
        print(f"| {x.case} | {x.rep} | {x.launches} ({x.rounds}) | {'yes' if x.decided else 'cap'} | {x.outcome} | "
              f"{x.p50_verdict} | {_f(x.baseline_p50_ms, '.2f')} | {_f(x.p50_ratio, '.3f')} | {_f(x.fastest_ratio, '.3f')} | {shift} | {_f(x.p_value, '.2g')} | {x.memory_verdict} | "
              f"{x.size_verdict} | {x.still_open} | {x.wall_s:.1f} |")
    unstable = [x for x in sorted(rows, key=lambda x: (CASES.index(x.case), x.rep)) if x.unstable_reason]
    if unstable:
        print("\nWhy the p50 samples were unstable (per-launch p50s in ms):\n")
        for x in unstable:
            print(f"- {x.case}, rep {x.rep}: {x.unstable_reason}")
    lb, la = r["load_before"], r["load_after"]
    s = r["sizes"]
    print(f"\n(model: {r['layers']} vs {r['layers'] + 1} blocks of Linear({r['width']}, {r['width']}) + ReLU, input "
          f"({r['batch']}, {r['width']}); artifact bytes baseline {s['baseline']}, +10 % compute {s['shared']}, "
          f"+10 % compute and weights {s['new']}; device local, threads {r['threads']}, iterations {r['iterations']}, "
          f"warm-up {r['warmup']}, min_launches {r['min_launches']}, max_launches {r['max_launches']}; "
          f"{r['repeats']} interleaved repetitions; launches count both sides; "
          f"load average (1/5/15 min) {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f} before, {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f} "
          f"after, on {os.cpu_count()} cores; all gates {r['total_s']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("--repeats", 5), ("--iterations", 20), ("--warmup", 3), ("--threads", 1),
                          ("--width", 512), ("--batch", 128), ("--layers", 10), ("--min-launches", 10),
                          ("--max-launches", 35)):
        ap.add_argument(flag, type=int, default=default)
    args = ap.parse_args(argv)
    say = lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)
    print_tables(run_gate_bench(args.repeats, args.iterations, args.warmup, args.threads, args.width, args.batch,
                                args.layers, args.min_launches, args.max_launches, say=say))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
