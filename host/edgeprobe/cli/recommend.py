"""`edgeprobe recommend MODEL --device D --eval DATA`: the fastest artifact within an accuracy budget,
with the table it was chosen from (every candidate, measured or with its reason)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}") from None


def _words(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from edgeprobe.recommendation import DEFAULT_RECIPES

    r = sub.add_parser("recommend", help="measure runtimes x recipes x threads; recommend the fastest within an "
                                         "accuracy budget")
    r.add_argument("model", help="a model name, file.py:factory or .pt2 (as bench takes)")
    r.add_argument("--device", default="local")
    r.add_argument("--token", help="the device runner's token (default: $EDGEPROBE_TOKEN)")
    r.add_argument("--eval", dest="eval_data", metavar="DATA",
                   help="evaluation inputs: PATH.npz (array x, optional labels y) or 'photos' (scikit-image's "
                        "bundled photos, for ImageNet classifiers); required: the budget is measured on them")
    r.add_argument("--calibration", metavar="DATA", help="calibration inputs for int8 recipes (same kinds; "
                                                        "with --eval photos, the photos not used for evaluation)")
    r.add_argument("--max-accuracy-drop", type=float, default=1.0,
                   help="budget in top-1 points against the fp32 model (default 1.0)")
    r.add_argument("--formats", type=_words, help="runtimes to try, e.g. pte,onnx,openvino,ncnn,tflite (default: "
                                                   "those five; one that is not installed is a row saying how)")
    r.add_argument("--recipes", type=_words, default=list(DEFAULT_RECIPES),
                   help=f"recipes to try (default {','.join(DEFAULT_RECIPES)}; each only where its format has it)")
    r.add_argument("--threads", type=_ints, default=[1, 2], help="thread counts to try (default 1,2)")
    r.add_argument("--iterations", type=int, default=30)
    r.add_argument("--warmup", type=int, default=5)
    r.add_argument("--rounds", type=int, default=1, help="interleaved rounds over all candidates (default 1)")
    r.add_argument("--eval-samples", type=int, default=256, help="evaluation inputs used at most (default 256)")
    r.add_argument("--weights", help="a state_dict for the model")
    r.add_argument("--json", metavar="PATH", help="write the recommendation and every candidate row as JSON")


def _num(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def render(rec) -> Table:
    t = Table(title=f"{escape(rec.model)} on {escape(rec.device)}: candidates "
                    f"(budget {rec.max_accuracy_drop:g} points of {rec.budget_metric}, "
                    f"{rec.eval_samples} inputs from {escape(rec.eval_source)})")
    for col in ("", "runtime", "recipe", "threads", "p50 ms", "top-1 agr.", "SQNR dB", "drop pts", "size MiB",
                "status"):
        t.add_column(col, justify="right" if col in ("threads", "p50 ms", "top-1 agr.", "SQNR dB", "drop pts",
                                                     "size MiB") else "left")
    for i, r in enumerate(rec.rows):
        if r.status == "not_applicable":
            continue  # counted under the table; every row is in --json
        mark = "★" if i == rec.recommended else ("fp32 best" if i == rec.fastest_fp32_peer else "")
        status = r.status if r.status == "ok" else f"{r.status}: {r.error}"
        if r.status == "ok" and r.within_budget is False:
            status = "over budget"
        if r.under_load:
            status += f" (under load: others used {r.others_cores:.2f} cores)"
        t.add_row(mark, r.runtime, escape(r.recipe), str(r.threads or "—"), _num(r.p50_ms, ".2f"),
                  _num(r.top1_agreement, ".3f"), _num(r.sqnr_db, ".1f"), _num(r.accuracy_drop_points, ".1f"),
                  _num(r.artifact_size_bytes and r.artifact_size_bytes / 2**20, ".2f"), escape(status[:120]))
    return t


def run(args: argparse.Namespace, console, err_console) -> int:
    from edgeprobe.api import recommend

    rec = recommend(args.model, device=args.device, formats=args.formats, recipes=args.recipes, threads=args.threads,
                    max_accuracy_drop=args.max_accuracy_drop, eval_data=args.eval_data, calibration=args.calibration,
                    weights=args.weights, iterations=args.iterations, warmup=args.warmup, rounds=args.rounds,
                    eval_samples=args.eval_samples, token=args.token,
                    progress=lambda m: err_console.print(f"[dim]{escape(m)}[/dim]"))
    console.print(render(rec))
    skipped = [r for r in rec.rows if r.status == "not_applicable"]
    if skipped:
        console.print(f"[dim]{len(skipped)} runtime x recipe pairs do not exist (e.g. {escape(skipped[0].runtime)} "
                      f"{escape(skipped[0].recipe)}: {escape(skipped[0].error or '')}); all rows are in --json[/dim]")
    if rec.recommended is None:
        console.print(f"[yellow]no recommendation:[/yellow] {escape(rec.reason or '')}")
    else:
        best = rec.rows[rec.recommended]
        ratio = f"; {rec.ratio:.2f}x the fastest fp32 candidate" if rec.ratio is not None else ""
        console.print(f"recommended: {escape(best.runtime)} {escape(best.recipe)} at {best.threads} threads, "
                      f"p50 {best.p50_ms:.2f} ms{ratio}; artifact {escape(best.artifact or '')}")
    if args.json:
        Path(args.json).write_text(json.dumps(rec.to_dict(), indent=2) + "\n")
        console.print(f"[dim]written {escape(args.json)}[/dim]")
    return 0 if rec.recommended is not None else 1
