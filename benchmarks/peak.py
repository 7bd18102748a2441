"""This machine's measured arithmetic peak, and what a latency implies against it.

A latency whose implied throughput (the model's FLOPs / latency) is above what the fastest kernels
measured here reach is a bug to explain, not a result. Prints the best of 10 runs of an sgemm and
of a 3x3 convolution through torch (MKL / oneDNN) at 1 and 2 threads, and the FLOPs of each model
counted by torch's FlopCounterMode (one multiply-add = 2 FLOPs).

    .venv/bin/python benchmarks/peak.py [--models resnet18,mobilenet_v2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode


def best_s(fn, runs: int = 10) -> float:
    for _ in range(3):
        fn()
    out = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    args = ap.parse_args()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    conv, x = torch.nn.Conv2d(256, 256, 3, padding=1).eval(), torch.randn(1, 256, 56, 56)
    conv_flop = 2 * 256 * 256 * 9 * 56 * 56
    with torch.no_grad():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            print(f"threads {threads}: sgemm 2048^3 {2 * 2048 ** 3 / best_s(lambda: a @ b) / 1e9:.0f} GFLOP/s, "
                  f"conv3x3 256->256 @56x56 {conv_flop / best_s(lambda: conv(x)) / 1e9:.0f} GFLOP/s")
        for name in args.models.split(","):
            m = getattr(torchvision.models, name)().eval()
            counter = FlopCounterMode(display=False)
            with counter:
                m(torch.randn(1, 3, 224, 224))
            print(f"{name} 1x3x224x224: {counter.get_total_flops() / 1e9:.3f} GFLOP per inference")


if __name__ == "__main__":
    main()
