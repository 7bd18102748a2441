"""int8 fidelity on real pretrained EfficientNet-Lite and real photos (issue 15, item 3).

Per model: fp32, plain ``int8`` (the baseline), ``int8-mixed:target=0`` (the better-calibrated int8:
ReLU6 fused into its conv, every layer int8) and ``int8-mixed:target=0.97``. Calibration on crops of
skimage's calibration photos; scored on crops of the DISJOINT evaluation photos, each .pte run by
ExecuTorch's XNNPACK runtime (compress.fidelity.evaluate), then timed on ``local`` with one thread.

    python benchmarks/int8_accuracy.py [--models efficientnet_lite0_pretrained,...] [--calibration 256]
        [--evaluation 128] [--iterations 20] [--recipes 'fp32;int8;...']
"""

from __future__ import annotations

import argparse
import sys
import time

RECIPES = ("fp32", "int8", "int8-mixed:target=0", "int8-mixed:target=0.97")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="efficientnet_lite0_pretrained,efficientnet_lite1_pretrained")
    ap.add_argument("--recipes", default=";".join(RECIPES), help="separated by ';'")
    ap.add_argument("--calibration", type=int, default=256, help="calibration-side crops (int8-mixed holds out 25 %%)")
    ap.add_argument("--evaluation", type=int, default=128, help="evaluation crops (other photos)")
    ap.add_argument("--iterations", type=int, default=20)
    a = ap.parse_args(argv)

    import edgeprobe
    from edgeprobe.compress import Context, apply_and_lower
    from edgeprobe.compress.fidelity import evaluate
    from edgeprobe.compress.photos import for_model
    from edgeprobe.models import load_model

    recipes = a.recipes.split(";")
    print("| model | recipe | top-1 agreement | SQNR dB | p50 ms (local, 1 thread) | layers fp32 | "
          "held-out top-1 (recipe's own .pte check) | build s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.models.split(","):
        spec = load_model(name)
        cal, ev = for_model(name, "calibration", a.calibration), for_model(name, "evaluation", a.evaluation)
        for recipe in recipes:
            t0 = time.monotonic()
            ctx = Context(spec.example_inputs, calibration=cal, log=lambda m: print(f"  .. {m}", file=sys.stderr))
            _, steps, art = apply_and_lower(spec, recipe, ctx)
            build_s = time.monotonic() - t0
            f = evaluate(art.model_path, spec.module, ev, spec.example_inputs, max_samples=len(ev))
            r = edgeprobe.bench(art, device="local", iterations=a.iterations, warmup=3, threads=1)
            p50 = f"{r.stats.p50_ms:.2f}" if r.ok else f"failed: {r.run.error}"
            s = steps[-1]["summary"] if steps else {}
            kept = f"{s['kept_fp32']} of {s['layers']}" if "kept_fp32" in s else ("all" if recipe == "fp32" else "0")
            held = f"{s['top1_agreement']:.3f}" if s.get("top1_agreement") is not None else ""
            print(f"| {name} | {recipe} | {f.top1_agreement:.3f} ({f.samples}) | {f.sqnr_db:.1f} | {p50} | {kept} | "
                  f"{held} | {build_s:.0f} |", flush=True)


if __name__ == "__main__":
    main()
