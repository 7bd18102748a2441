"""Sweep: every recipe compressed, lowered, measured on the device and scored for fidelity.

Each row is one recipe: latency (from the device runner), artifact size, peak memory, parameter
counts, fidelity against the fp32 model (SQNR, cosine, max error, top-1 agreement; accuracy with
labels). A recipe that fails is a row with its error, never a crash of the sweep. The Pareto front
is marked over (p50 latency, artifact size, quality) where quality is accuracy when labels exist,
otherwise SQNR.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from edgeprobe import compress
from edgeprobe.compress import Context, Dataset
from edgeprobe.errors import UsageError
from edgeprobe.request import Request

SWEEP_SCHEMA_VERSION = 1
Progress = Callable[[str], None]


def split_recipes(text: str) -> list[str]:
    """``fp32,int8,distill:T=4,alpha=0.5,channel:0.3+int8`` -> one string per recipe: a comma-separated
    piece that is ``key=value`` with a key that is no recipe continues the previous recipe's parameters."""
    compress._load_all()
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        key = piece.split("=", 1)[0]
        if out and "=" in piece and ":" not in piece and "+" not in piece and key not in compress.RECIPES:
            out[-1] += "," + piece
        else:
            out.append(piece)
    if not out:
        raise UsageError("no recipes given; e.g. --recipes fp32,int8,channel:0.3+int8")
    return out


@dataclass(frozen=True)
class SweepRow:
    recipe: str  # as given
    status: str  # ok | error
    error: Optional[str] = None
    latency_p50_ms: Optional[float] = None
    latency_p90_ms: Optional[float] = None
    latency_mean_ms: Optional[float] = None
    latency_std_ms: Optional[float] = None
    iterations: Optional[int] = None
    latency_cv_percent: Optional[float] = None
    unstable_reason: Optional[str] = None  # why the latency is not a stable figure (LatencyStats.unstable_reason)
    artifact_size_bytes: Optional[int] = None
    storage_bytes_if_packed: Optional[int] = None  # computed (clustering), not measured in the artifact
    peak_memory_bytes: Optional[int] = None  # runner's peak RSS above its pre-load baseline
    params: Optional[int] = None
    nonzero_params: Optional[int] = None
    sqnr_db: Optional[float] = None
    cosine: Optional[float] = None
    max_abs_error: Optional[float] = None
    top1_agreement: Optional[float] = None
    accuracy: Optional[float] = None
    verification_passed: Optional[bool] = None
    pareto: bool = False
    artifact_dir: Optional[str] = None
    seconds: float = 0.0  # wall time of compress + lower + measure + score
    steps: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()
    canonical: str = ""  # the recipe with every parameter spelled out (the manifest's recipe)


@dataclass(frozen=True)
class SweepResult:
    model_ref: str
    device: str
    dataset: str  # digits | user | random inputs (no labels)
    eval_samples: int
    reference_accuracy: Optional[float]
    rows: tuple[SweepRow, ...]
    created_utc: str
    quality: str  # accuracy | sqnr_db: the Pareto front's quality axis
    request: Optional[Request] = None  # the command and every argument that produced this table
    schema_version: int = SWEEP_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    def save_json(self, path: Path) -> None:
        from edgeprobe.fsutil import atomic_write_text  # temp file + fsync + rename: no half-written sweep

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n", fault="sweep-save")

    def save_csv(self, path: Path) -> None:
        skip = {"steps", "notes"}
        fields = [f.name for f in dataclasses.fields(SweepRow) if f.name not in skip] + ["notes"]
        from edgeprobe.fsutil import atomic_writer

        with atomic_writer(path, "w", newline="", fault="sweep-csv") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in self.rows:
                d = {k: v for k, v in dataclasses.asdict(r).items() if k not in skip}
                d["notes"] = " | ".join(r.notes)
                w.writerow(d)

    def plot(self, path: Path) -> None:
        """latency vs quality and latency vs size; the Pareto front highlighted."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ok = [r for r in self.rows if r.status == "ok" and r.latency_p50_ms is not None]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for ax, (key, label) in zip(axes, ((self.quality, "accuracy" if self.quality == "accuracy" else "SQNR (dB)"),
                                           ("artifact_size_bytes", "artifact size (KiB)"))):
            for r in ok:
                y = getattr(r, key)
                if y is None or (isinstance(y, float) and math.isinf(y)):
                    y = _finite_cap(ok, key) if y is not None else None
                if y is None:
                    continue
                y = y / 1024 if key == "artifact_size_bytes" else y
                ax.scatter(r.latency_p50_ms, y, s=60 if r.pareto else 25, marker="*" if r.pareto else "o",
                           color="tab:red" if r.pareto else "tab:blue", zorder=3)
                ax.annotate(r.recipe, (r.latency_p50_ms, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
            ax.set_xlabel(f"p50 latency (ms) on {self.device}")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        fig.suptitle(f"{self.model_ref}: recipes measured on {self.device} (red stars: Pareto front)")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _finite_cap(rows: Sequence[SweepRow], key: str) -> Optional[float]:
    """Where to draw an infinite SQNR (fp32 vs itself): a little above the best finite one."""
    finite = [getattr(r, key) for r in rows if getattr(r, key) is not None and not math.isinf(getattr(r, key))]
    return (max(finite) + 10.0) if finite else 100.0


_jsonable = compress.json_safe


def pareto_front(rows: Sequence[SweepRow], quality: str) -> set[int]:
    """Indices of ok rows that no other ok row matches or beats on all of (p50 latency, size,
    quality) while beating it on one."""
    pts = []
    for i, r in enumerate(rows):
        q = getattr(r, quality)
        if r.status == "ok" and r.latency_p50_ms is not None and r.artifact_size_bytes is not None and q is not None:
            pts.append((i, r.latency_p50_ms, float(r.artifact_size_bytes), -q))
    front = set()
    for i, *a in pts:
        dominated = any(all(y <= x for x, y in zip(a, b)) and any(y < x for x, y in zip(a, b))
                        for j, *b in pts if j != i)
        if not dominated:
            front.add(i)
    return front


def _random_dataset(example_inputs: tuple[torch.Tensor, ...], n: int, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = example_inputs[0]
    return Dataset(torch.rand((n, *x.shape[1:]), generator=g, dtype=x.dtype))


def sweep(
    model: Any,
    recipes: Sequence[str] | str,
    *,
    device: str = "local",
    dataset: str = "auto",
    calibration: Any = None,
    train: Any = None,
    eval_data: Any = None,
    train_fn: Optional[Callable] = None,
    student: Optional[torch.nn.Module] = None,
    train_epochs: Optional[int] = None,
    weights: Optional[str] = None,
    input_shape: Optional[Sequence[int]] = None,
    iterations: int = 20,
    warmup: int = 3,
    min_seconds: float = 0.0,
    max_iterations: int = 0,
    threads: int = 0,
    token: Optional[str] = None,
    timeout_s: float = 300.0,
    eval_samples: int = 512,
    progress: Optional[Progress] = None,
) -> SweepResult:
    """Compress ``model`` with each recipe, lower it to .pte (XNNPACK), measure it on ``device`` and
    score its fidelity; returns the table (rows in the order given) with the Pareto front marked.

    ``dataset="digits"`` (the default for the zoo's ``digits_cnn``) trains the model on scikit-learn's
    bundled digits first (unless ``weights`` are given or ``train_epochs=0``) and uses its train split
    for calibration, fine-tuning and distillation and its test split for accuracy. Otherwise
    ``calibration``/``train``/``eval_data`` come from the caller (tensors, .npz, callables); without
    ``eval_data`` fidelity is scored on random inputs (no accuracy). The device is opened (and its
    runner checked) before any model is trained, compressed or lowered.
    """
    say = progress or (lambda _m: None)
    names = split_recipes(recipes) if isinstance(recipes, str) else list(recipes)
    for name in names:
        compress.parse(name)  # bad recipe strings fail before any work, with the valid list
    from edgeprobe.session import MeasureConfig, open_session

    config = MeasureConfig(warmup=warmup, iterations=iterations, min_seconds=min_seconds,
                           max_iterations=max_iterations, threads=threads, timeout_s=timeout_s)
    # the device is opened (a bad id or an unreachable device fail here, before any work) and held
    # for the whole sweep: its runner is deployed once, not once per recipe
    with open_session(device, runner="native", token=token, log=say) as session:
        session.check("pte")
        return _sweep(session, config, names, model, input_shape, weights, dataset, calibration, train, eval_data,
                      train_epochs, train_fn, student, eval_samples, say)


def _sweep(session, config, names, model, input_shape, weights, dataset, calibration, train, eval_data, train_epochs,
           train_fn, student, eval_samples, say) -> SweepResult:
    from edgeprobe.compress import data as D
    from edgeprobe.compress.fidelity import evaluate
    from edgeprobe.models import load_model

    spec = load_model(model, input_shape=input_shape, weights=weights)
    if spec.module is None:
        raise UsageError("sweep needs an eager nn.Module (or a model name); an ExportedProgram cannot be pruned")
    module = spec.module.eval()
    ref = spec.ref
    if dataset == "auto":
        dataset = "digits" if ref == "digits_cnn" else ("user" if eval_data is not None else "random")
    calib, train_ds, eval_ds = compress.as_dataset(calibration), compress.as_dataset(train), compress.as_dataset(eval_data)
    if dataset == "digits":
        splits = D.digits()
        train_ds = train_ds or splits.train
        calib = calib or splits.train
        eval_ds = eval_ds or splits.test
        epochs = train_epochs if train_epochs is not None else (0 if weights else 15)
        if epochs:
            say(f"training {ref} on the digits train split ({len(splits.train)} samples, {epochs} epochs)")
            t0 = time.monotonic()
            D.train_classifier(module, splits.train, epochs=epochs)
            say(f"trained in {time.monotonic() - t0:.1f} s; test accuracy {D.accuracy(module, splits.test):.3f}")
    elif dataset not in ("user", "random"):
        raise UsageError(f"unknown dataset {dataset!r}; use auto, digits, user or random")
    if eval_ds is None:
        eval_ds = _random_dataset(spec.example_inputs, 32, seed=1)
        dataset = "random inputs (no labels)"
    ctx = Context(example_inputs=spec.example_inputs, calibration=calib, train=train_ds, train_fn=train_fn,
                  student=student, log=say)
    rows: list[SweepRow] = []
    for i, name in enumerate(names, 1):
        say(f"[{i}/{len(names)}] {name}")
        t0 = time.monotonic()
        try:
            rows.append(_row(name, module, spec, ctx, eval_ds, eval_samples, session, config, say, evaluate))
        except Exception as exc:  # noqa: BLE001 - a failing recipe is a row with its error, never a crash
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            say(f"{name}: failed: {type(exc).__name__}: {msg}")
            rows.append(SweepRow(name, "error", f"{type(exc).__name__}: {msg}"))
        rows[-1] = dataclasses.replace(rows[-1], seconds=time.monotonic() - t0)
    quality = "accuracy" if eval_ds.y is not None else "sqnr_db"
    front = pareto_front(rows, quality)
    rows = [dataclasses.replace(r, pareto=i in front) for i, r in enumerate(rows)]
    ref_acc = D.accuracy(module, eval_ds) if eval_ds.y is not None else None
    return SweepResult(ref, session.id, dataset, min(len(eval_ds), eval_samples), ref_acc, tuple(rows),
                       _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), quality)


def _row(name, module, spec, ctx, eval_ds, eval_samples, session, config, say, evaluate) -> SweepRow:
    comp, steps, art = compress.apply_and_lower(spec, name, ctx, module=module, progress=say)
    fid = evaluate(art.model_path, module, eval_ds, spec.example_inputs, max_samples=eval_samples)
    say(f"measuring on {session.id}: {config.warmup} warm-up + {config.iterations} iterations")
    res = session.measure(art, config)
    notes = tuple(n for s in comp.steps for n in s.notes)
    packed = [s.summary["storage_bytes_if_packed"] for s in comp.steps if "storage_bytes_if_packed" in s.summary]
    common = dict(params=comp.params, nonzero_params=comp.nonzero_params, artifact_size_bytes=art.manifest.artifact_size_bytes,
                  sqnr_db=fid.sqnr_db, cosine=fid.cosine, max_abs_error=fid.max_abs_error,
                  top1_agreement=fid.top1_agreement, accuracy=fid.accuracy, artifact_dir=str(art.dir),
                  steps=steps, notes=notes, storage_bytes_if_packed=packed[-1] if packed else None)
    common["canonical"] = comp.recipe
    if not res.ok:
        err = res.run.error
        return SweepRow(name, "error", f"{err.code}: {err.message}" if err else "run failed", **common)
    st = res.stats
    mem = res.run.memory.peak_rss_delta_bytes if res.run.memory else None
    ver = res.run.verification
    return SweepRow(name, "ok", None, st.p50_ms if st else None, st.p90_ms if st else None,
                    st.mean_ms if st else None, st.std_ms if st else None, st.n if st else None,
                    latency_cv_percent=st.cv_percent if st else None, unstable_reason=st.unstable_reason if st else None,
                    peak_memory_bytes=mem, verification_passed=ver.passed if ver else None, **common)
