"""`edgeprobe recommend`: the fastest artifact that keeps its accuracy, chosen from measurements.

Candidates are runtimes (formats) × recipes × thread counts. Each (format, recipe) is lowered once;
its fidelity is scored once on the evaluation inputs by running the artifact itself on this host with
its own runtime (``compress.fidelity``); then every (artifact, threads) is measured on the device,
interleaved round by round so that a slow minute of the machine does not favour one runtime. A
candidate is within the budget when its top-1 drop (labels given: accuracy against the fp32 model's on
the same inputs; else 1 - top-1 agreement with fp32), in points, is at most ``max_accuracy_drop``. The
recommendation is the fastest candidate within the budget; the ratio compares it with the fastest fp32
candidate measured in the same run (any runtime, any thread count). A candidate that could not be built
or run is a row with its error, never a crash; one that was not measured has null numbers.
"""

from __future__ import annotations

import dataclasses
import os
import datetime as _dt
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from edgeprobe.errors import UsageError

SCHEMA_VERSION = 1
DEFAULT_RECIPES = ("fp32", "fp16", "int8", "int8-mixed")
# Other processes' CPU use (in cores, from /proc/stat during the run) above which a row is flagged: on a
# 2-core machine a quarter of a core is enough to make 2 threads look no faster than 1.
LOADED_OTHERS_CORES = 0.25

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CandidateRow:
    runtime: str  # the lowering target (executorch, onnxruntime, openvino, ncnn, litert, torchscript_lite)
    format: str
    backend: str
    recipe: str
    threads: int
    status: str  # ok | error | unavailable | not_applicable
    error: Optional[str] = None
    p50_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    iterations: Optional[int] = None
    threads_used: Optional[int] = None
    top1_agreement: Optional[float] = None  # with the fp32 model, on the evaluation inputs
    sqnr_db: Optional[float] = None
    accuracy: Optional[float] = None  # against labels, when the evaluation data has them
    accuracy_drop_points: Optional[float] = None
    within_budget: Optional[bool] = None
    artifact: Optional[str] = None  # the artifact directory
    artifact_size_bytes: Optional[int] = None
    runtime_version: Optional[str] = None
    others_cores: Optional[float] = None  # other processes' CPU use during the run
    under_load: Optional[bool] = None

    @property
    def label(self) -> str:
        return f"{self.runtime}/{self.recipe}@{self.threads}t"


@dataclass(frozen=True)
class Recommendation:
    model: str
    device: str
    max_accuracy_drop: float
    budget_metric: str  # "accuracy" (labels) | "top1_agreement"
    eval_source: str
    eval_samples: int
    reference_accuracy: Optional[float]
    rows: tuple[CandidateRow, ...]
    recommended: Optional[int]  # index into rows
    fastest_fp32_peer: Optional[int]
    reason: Optional[str]  # why nothing is recommended
    created_utc: str
    schema_version: int = SCHEMA_VERSION

    @property
    def ratio(self) -> Optional[float]:
        """Recommended p50 ÷ the fastest fp32 candidate's p50 (both measured in this run)."""
        if self.recommended is None or self.fastest_fp32_peer is None:
            return None
        return self.rows[self.recommended].p50_ms / self.rows[self.fastest_fp32_peer].p50_ms

    def to_dict(self) -> dict[str, Any]:
        rec = self.rows[self.recommended] if self.recommended is not None else None
        peer = self.rows[self.fastest_fp32_peer] if self.fastest_fp32_peer is not None else None
        return {
            "schema_version": self.schema_version, "model": self.model, "device": self.device,
            "created_utc": self.created_utc, "max_accuracy_drop": self.max_accuracy_drop,
            "budget_metric": self.budget_metric, "eval_source": self.eval_source, "eval_samples": self.eval_samples,
            "reference_accuracy": self.reference_accuracy,
            "recommended": None if rec is None else {
                "runtime": rec.runtime, "format": rec.format, "backend": rec.backend, "recipe": rec.recipe,
                "threads": rec.threads, "p50_ms": rec.p50_ms, "top1_agreement": rec.top1_agreement,
                "sqnr_db": rec.sqnr_db, "accuracy": rec.accuracy, "artifact": rec.artifact},
            "fastest_fp32_peer": None if peer is None else {
                "runtime": peer.runtime, "format": peer.format, "threads": peer.threads, "p50_ms": peer.p50_ms},
            "ratio": self.ratio, "reason": self.reason,
            "candidates": [_json_row(r) for r in self.rows],
        }


def _json_row(row: CandidateRow) -> dict[str, Any]:
    import math

    out = dataclasses.asdict(row)
    if out["sqnr_db"] is not None and math.isinf(out["sqnr_db"]):
        out["sqnr_db"] = "inf"  # identical outputs; JSON has no infinity
    return out


def applicable(recipe: str, format: str, own: frozenset[str]) -> Optional[str]:
    """None when ``recipe`` can be built for ``format`` (``own``: the recipes its target carries out
    itself), else why not. PT2E quantization lowers to ExecuTorch only."""
    from edgeprobe import compress

    steps = compress.parse(recipe)
    if not steps:
        return None
    last = compress.RECIPES[steps[-1].name]
    if steps[-1].name in own:
        return None
    if last.kind == "target":
        return f"recipe {steps[-1].name} is carried out by the lowering target; {format} does not have it"
    if last.kind == "quant" and format != "pte":
        return f"{steps[-1].name} is a PT2E graph recipe, which lowers to ExecuTorch (.pte) only"
    return None


def recommend(model: Any, *, device: str = "local", formats: Optional[Sequence[str]] = None,
              recipes: Sequence[str] = DEFAULT_RECIPES, threads: Sequence[int] = (1, 2),
              max_accuracy_drop: float = 1.0, eval_data: Any = None, calibration: Any = None,
              weights: Optional[str] = None, input_shape: Optional[Sequence[int]] = None,
              iterations: int = 30, warmup: int = 5, rounds: int = 1, eval_samples: int = 256,
              token: Optional[str] = None, timeout_s: float = 300.0,
              progress: Optional[Progress] = None) -> Recommendation:
    """Measure the candidates on ``device`` and recommend the fastest within the accuracy budget."""
    from edgeprobe import compress
    from edgeprobe.lower import capabilities

    say = progress or (lambda _m: None)
    if eval_data is None:
        raise UsageError("recommend needs evaluation inputs for its accuracy budget: pass --eval PATH.npz (array x "
                         "of model inputs, optional labels y) or --eval photos (scikit-image's bundled photos, for "
                         "ImageNet classifiers)")
    if not (max_accuracy_drop >= 0):
        raise UsageError(f"--max-accuracy-drop must be >= 0 points, got {max_accuracy_drop}")
    if not threads or any(t < 1 for t in threads):
        raise UsageError(f"--threads must list thread counts >= 1, got {list(threads)}")
    if rounds < 1:
        raise UsageError("--rounds must be >= 1")
    for r in recipes:
        compress.parse(r)  # bad recipe strings fail before any work
    formats = list(formats) if formats else [f for f in ("pte", "onnx", "openvino", "ncnn", "tflite")]
    for f in formats:
        if f not in capabilities.DEFAULT_BACKEND:
            raise UsageError(f"unknown format {f!r}; choose from {', '.join(capabilities.FORMATS)}")

    from edgeprobe.models import load_model

    spec = load_model(model, input_shape=input_shape, weights=weights)
    if spec.module is None:
        raise UsageError("recommend needs an eager nn.Module (or a model name)")
    eval_ds, calib_ds, eval_source = _datasets(spec.ref, eval_data, calibration, spec.example_inputs)
    module = spec.module.eval()
    ctx = compress.Context(example_inputs=spec.example_inputs, calibration=calib_ds, log=say)
    ref_acc = _accuracy(module, eval_ds, eval_samples) if eval_ds.y is not None else None
    metric = "accuracy" if eval_ds.y is not None else "top1_agreement"

    built = _build(spec, module, ctx, formats, recipes, eval_ds, eval_samples, ref_acc, say)
    rows = _measure_all(built, device, threads, iterations, warmup, rounds, token, timeout_s, say)
    rows = [_budget(r, max_accuracy_drop) for r in rows]
    best, peer, reason = choose(rows, max_accuracy_drop)
    return Recommendation(spec.ref, device, max_accuracy_drop, metric, eval_source,
                          min(len(eval_ds), eval_samples), ref_acc, tuple(rows), best, peer, reason,
                          _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def choose(rows: Sequence[CandidateRow], max_accuracy_drop: float) -> tuple[Optional[int], Optional[int], Optional[str]]:
    """(the fastest measured row within the budget, the fastest measured fp32 row, why nothing when
    nothing). A row whose fidelity is unknown is never within the budget."""
    ok = [i for i, r in enumerate(rows) if r.status == "ok" and r.p50_ms is not None]
    fp32 = [i for i in ok if rows[i].recipe == "fp32"]
    eligible = [i for i in ok if rows[i].within_budget]
    best = min(eligible, key=lambda i: rows[i].p50_ms) if eligible else None
    peer = min(fp32, key=lambda i: rows[i].p50_ms) if fp32 else None
    reason = None
    if best is None:
        reason = ("no candidate was measured" if not ok else
                  f"no measured candidate is within {max_accuracy_drop:g} points of the fp32 model")
    return best, peer, reason


# torchvision's ImageNet normalisation: the preprocessing of a model not in models.zoo.PREPROCESS
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTO_SAMPLES = {"calibration": 128, "evaluation": 128}


def _photos(ref: str, split: str, example_inputs: Any) -> Any:
    """``compress.photos`` preprocessed as the zoo says for ``ref``, else at the model's input size with
    torchvision's ImageNet normalisation (a square RGB input is required)."""
    from edgeprobe.compress import photos
    from edgeprobe.models.zoo import PREPROCESS

    if ref in PREPROCESS:
        return photos.for_model(ref, split, PHOTO_SAMPLES[split])
    shape = tuple(example_inputs[0].shape)
    if len(example_inputs) != 1 or len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise UsageError(f"--eval photos needs one square RGB image input (1, 3, S, S); this model takes {shape}")
    return photos.photos(split, PHOTO_SAMPLES[split], shape[2], IMAGENET_MEAN, IMAGENET_STD)


def _datasets(ref: str, eval_data: Any, calibration: Any, example_inputs: Any) -> tuple[Any, Any, str]:
    """(evaluation, calibration, where the evaluation inputs come from). ``photos``: scikit-image's
    bundled photos, the calibration and evaluation photos disjoint (``compress.photos``); with
    ``--eval photos`` and no calibration, the calibration photos."""
    from edgeprobe import compress

    is_photos = lambda d: isinstance(d, str) and d == "photos"  # noqa: E731
    if is_photos(eval_data):
        eval_ds = _photos(ref, "evaluation", example_inputs)
        source = f"scikit-image photos ({len(eval_ds)} crops of {', '.join(_photo_names('evaluation'))})"
    else:
        eval_ds, source = compress.as_dataset(eval_data), str(eval_data) if isinstance(eval_data, str) else "given"
    if is_photos(calibration) or (calibration is None and is_photos(eval_data)):
        calib_ds = _photos(ref, "calibration", example_inputs)
    else:
        calib_ds = compress.as_dataset(calibration)
    want = tuple(example_inputs[0].shape[1:])
    if tuple(eval_ds.x.shape[1:]) != want:
        raise UsageError(f"evaluation inputs have shape {tuple(eval_ds.x.shape[1:])} per sample; the model takes {want}")
    return eval_ds, calib_ds, source


def _photo_names(split: str) -> tuple[str, ...]:
    from edgeprobe.compress import photos

    return photos.SPLITS[split]


def _accuracy(module: Any, ds: Any, n: int) -> float:
    import torch

    with torch.no_grad():
        pred = torch.cat([module(ds.x[i:i + 1]).argmax(1) for i in range(min(len(ds), n))])
    return float((pred == ds.y[:len(pred)]).double().mean())


@dataclass(frozen=True)
class _Built:
    """One (format, recipe): its artifact and fidelity, or why there is none."""

    row: CandidateRow  # threads 0 placeholder; status ok when the artifact exists
    artifact: Any = None


def _build(spec, module, ctx, formats, recipes, eval_ds, eval_samples, ref_acc, say) -> list[_Built]:
    from edgeprobe import compress
    from edgeprobe.compress.fidelity import evaluate
    from edgeprobe.lower import capabilities, target_recipes

    out: list[_Built] = []
    for fmt in formats:
        backend = capabilities.DEFAULT_BACKEND[fmt]
        cap = next(c for c in capabilities.table() if c.format == fmt and c.backend == backend)
        if not cap.supported:
            out.append(_Built(CandidateRow(cap.target, fmt, backend, "fp32", 0, "unavailable", cap.reason)))
            continue
        own = target_recipes(fmt, backend)
        for recipe in recipes:
            base = CandidateRow(cap.target, fmt, backend, compress.canonical(recipe), 0, "ok")
            why = applicable(recipe, fmt, own)
            if why:
                out.append(_Built(dataclasses.replace(base, status="not_applicable", error=why)))
                continue
            say(f"building {fmt}/{recipe}")
            try:
                _comp, _steps, art = compress.apply_and_lower(spec, recipe, ctx, module=module, format=fmt,
                                                              backend=backend, progress=say)
                fid = evaluate(art.model_path, module, eval_ds, spec.example_inputs, max_samples=eval_samples)
            except Exception as exc:  # noqa: BLE001 - a converter or recipe that fails is a row with its error
                msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                if os.environ.get("EDGEPROBE_DEBUG"):
                    import traceback

                    traceback.print_exc()
                say(f"{fmt}/{recipe}: {type(exc).__name__}: {msg}")
                out.append(_Built(dataclasses.replace(base, status="error", error=f"{type(exc).__name__}: {msg}")))
                continue
            drop = None
            if ref_acc is not None and fid.accuracy is not None:
                drop = 100.0 * (ref_acc - fid.accuracy)
            elif fid.top1_agreement is not None:
                drop = 100.0 * (1.0 - fid.top1_agreement)
            out.append(_Built(dataclasses.replace(
                base, top1_agreement=fid.top1_agreement, sqnr_db=fid.sqnr_db, accuracy=fid.accuracy,
                accuracy_drop_points=drop, artifact=str(art.dir),
                artifact_size_bytes=art.manifest.artifact_size_bytes), art))
    return out


def _measure_all(built, device, threads, iterations, warmup, rounds, token, timeout_s, say) -> list[CandidateRow]:
    """Every built artifact at every thread count, interleaved: round r measures each cell once."""
    from contextlib import ExitStack

    from edgeprobe.devices import default_runner
    from edgeprobe.session import MeasureConfig, open_session

    rows: list[CandidateRow] = []
    cells: list[tuple[int, Any, int]] = []  # (row index, artifact, threads)
    for b in built:
        if b.artifact is None:
            rows.append(b.row)
            continue
        for t in threads:
            rows.append(dataclasses.replace(b.row, threads=t))
            cells.append((len(rows) - 1, b.artifact, t))
    samples: dict[int, list[int]] = {i: [] for i, _, _ in cells}
    last: dict[int, Any] = {}
    busiest: dict[int, Optional[float]] = {}  # the most other-process CPU use over the rounds
    with ExitStack() as stack:
        sessions: dict[str, Any] = {}
        for rnd in range(rounds):
            for n, (i, art, t) in enumerate(cells, 1):
                runner = default_runner(art.manifest.format)
                if runner not in sessions:
                    sessions[runner] = stack.enter_context(open_session(device, runner=runner, token=token, log=say))
                say(f"round {rnd + 1}/{rounds}, {n}/{len(cells)}: {rows[i].label}")
                res = sessions[runner].measure(art, MeasureConfig(warmup=warmup, iterations=iterations, threads=t,
                                                                  timeout_s=timeout_s))
                last[i] = res
                busiest[i] = _max_known(busiest.get(i), _others_cores(res))
                if res.ok and res.run.timing:
                    samples[i].extend(res.run.timing.iteration_ns)
                elif not res.ok:
                    err = res.run.error
                    rows[i] = dataclasses.replace(rows[i], status="error",
                                                  error=f"{err.code}: {err.message}" if err else "run failed")
    for i, res in last.items():
        rows[i] = _with_timing(rows[i], res, samples[i], busiest.get(i))
    return rows


def _others_cores(res: Any) -> Optional[float]:
    load = res.device_state.cpu_load if res.device_state else None
    return load.others_cores if load is not None and load.available else None


def _max_known(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return b if a is None else (a if b is None else max(a, b))


def _with_timing(row: CandidateRow, res: Any, iteration_ns: list[int], others: Optional[float]) -> CandidateRow:
    import statistics

    common = dict(threads_used=res.run.config.threads_used if res.run.config else None,
                  runtime_version=res.run.runner.runtime_version if res.run.runner else None,
                  others_cores=others, under_load=None if others is None else others > LOADED_OTHERS_CORES)
    if row.status != "ok" or not iteration_ns:
        return dataclasses.replace(row, **common)
    ms = sorted(x / 1e6 for x in iteration_ns)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return dataclasses.replace(row, p50_ms=statistics.median(ms), p90_ms=p90, iterations=len(ms), **common)


def _budget(row: CandidateRow, max_drop: float) -> CandidateRow:
    if row.status != "ok" or row.accuracy_drop_points is None:
        return row
    return dataclasses.replace(row, within_budget=row.accuracy_drop_points <= max_drop + 1e-9)
