"""Compression sweep on MobileNetV2 and ResNet18 on `local`: latency, size and SQNR per recipe as
ratios to the fp32 row of the same run (random weights, seeded; random calibration and evaluation
inputs, so no accuracy: SQNR against fp32 is the fidelity measure).

Pretrained weights cannot be downloaded here. With torchvision's random initialization and
default BatchNorm statistics, MobileNetV2's activations die out and its outputs are exactly zero,
which makes every fidelity number meaningless; so the BatchNorm statistics are first re-estimated
on random inputs (a data-dependent initialization), which gives non-degenerate activations."""

from __future__ import annotations

import math
import sys

DEFAULT_RECIPES = "fp32,int8,int8-dynamic,pow2,magnitude:0.5,channel:0.3,channel:0.3+int8,lowrank:0.5,cluster:16"


def bn_calibrated(name: str, batches: int = 8, batch_size: int = 4):
    """The torchvision model with BatchNorm running statistics re-estimated on random inputs."""
    import torch

    from edgeprobe.models import load_model

    module = load_model(name).module
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    g = torch.Generator().manual_seed(0)
    module.train()
    with torch.no_grad():
        for _ in range(batches):
            module(torch.rand(batch_size, 3, 224, 224, generator=g))
    return module.eval()


def run_sweep_bench(models=("mobilenet_v2", "resnet18"), recipes: str = DEFAULT_RECIPES, iterations: int = 20,
                    warmup: int = 3, say=lambda m: None) -> None:
    from edgeprobe.compress.sweep import sweep

    print("| model | recipe | p50 ms | latency × fp32 | size MiB | size × fp32 | SQNR dB | Pareto | status |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in models:
        r = sweep(bn_calibrated(model), recipes, iterations=iterations, warmup=warmup, progress=say,
                  input_shape=(1, 3, 224, 224))
        base = next((x for x in r.rows if x.recipe == "fp32" and x.status == "ok"), None)
        for x in r.rows:
            if x.status != "ok":
                print(f"| {model} | {x.recipe} | | | | | | | error: {x.error} |", flush=True)
                continue
            lat = f"{x.latency_p50_ms / base.latency_p50_ms:.2f}" if base else ""
            size = f"{x.artifact_size_bytes / base.artifact_size_bytes:.2f}" if base else ""
            packed = f" ({x.storage_bytes_if_packed / 2**20:.1f} packed†)" if x.storage_bytes_if_packed else ""
            sq = "inf" if math.isinf(x.sqnr_db) else f"{x.sqnr_db:.1f}"
            print(f"| {model} | {x.recipe} | {x.latency_p50_ms:.3f} | {lat} | {x.artifact_size_bytes / 2**20:.2f}{packed} "
                  f"| {size} | {sq} | {'*' if x.pareto else ''} | ok |", flush=True)
    print("\n† computed from cluster indices and codebooks, not stored by the fp32 .pte. Calibration and "
          "evaluation on random inputs (32 samples): int8 rows carry the random-calibration warning.")


if __name__ == "__main__":
    run_sweep_bench(say=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True))
