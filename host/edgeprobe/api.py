"""The Python API, one request each: bench, export, profile, sweep, split, gate (and rerun). The CLI is a
thin layer over these functions, with the same words; every record they return carries the request
that produced it (``edgeprobe.request``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from edgeprobe.devices import default_runner
from edgeprobe.errors import UsageError
from edgeprobe.lower import Artifact, capabilities, load_artifact, lower
from edgeprobe.profiling import OperatorRow, ProfileReport, operator_table, profile_on  # noqa: F401 - re-exported
from edgeprobe.results import BenchResult
from edgeprobe.request import Request, records_request, rerun_arguments
from edgeprobe.session import MeasureConfig, MeasureSession, open_session
from edgeprobe_runner.backends import BACKENDS

MODEL_SUFFIXES = tuple(b.suffix for b in BACKENDS)  # a bare model file, which is not an artifact

Progress = Callable[[str], None]


def export(
    model,
    *,
    format: str = "pte",
    backend: Optional[str] = None,
    input_shape: Optional[Sequence[int]] = None,
    example_inputs=None,
    weights: Optional[Union[str, Path]] = None,
    out_dir: Optional[Union[str, Path]] = None,
    use_cache: bool = True,
    progress: Optional[Progress] = None,
) -> Artifact:
    """Lower ``model`` to an artifact directory (model file + test vectors + manifest)."""
    capabilities.resolve(format, backend)  # unsupported combinations fail before any work
    from edgeprobe.models import load_model

    spec = load_model(model, example_inputs=example_inputs, input_shape=input_shape, weights=weights)
    return lower(spec, format=format, backend=backend, use_cache=use_cache,
                 out_dir=Path(out_dir) if out_dir else None, progress=progress)


def _given_artifact(model) -> Optional[Artifact]:
    """The artifact ``model`` already is (an Artifact or an artifact directory), without lowering."""
    if isinstance(model, Artifact):
        return model
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        return load_artifact(Path(model))
    if isinstance(model, (str, Path)) and str(model).endswith(MODEL_SUFFIXES):
        raise UsageError(
            f"{model}: bench an artifact directory from `edgeprobe export` (it carries the manifest "
            "and test vectors), or pass the model itself"
        )
    return None


def _artifact_for(model, format: str, backend: Optional[str], input_shape, example_inputs, weights,
                  use_cache: bool, progress: Optional[Progress]) -> Artifact:
    return _given_artifact(model) or export(
        model, format=format, backend=backend, input_shape=input_shape, example_inputs=example_inputs,
        weights=weights, use_cache=use_cache, progress=progress)


def _target(s: MeasureSession) -> capabilities.TargetDevice:
    return capabilities.TargetDevice.of(s.id, s.transport.kind, s.transport.info())


def _check_device_backend(s: MeasureSession, format: str, backend: Optional[str]) -> None:
    """A backend the device brings (vulkan): the device must list it, and only its app runner has it."""
    capabilities.resolve(format, backend, _target(s))
    if s.runner != "app":
        raise UsageError(f"--backend {backend} runs in the edgeprobe app's in-process runner (its {backend} "
                         f"delegate), not the {s.runner} runner: add --runner app")


def _artifact_for_device(s: MeasureSession, model, format: str, backend: Optional[str], input_shape, example_inputs,
                         weights, use_cache: bool, progress: Optional[Progress]) -> Artifact:
    """``_artifact_for``, lowered for the session's device: a backend that device brings (vulkan on
    an edgeprobe app that lists it) is allowed, and refused with the reason anywhere else."""
    if not capabilities.device_dependent(format, backend):
        return _artifact_for(model, format, backend, input_shape, example_inputs, weights, use_cache, progress)
    _check_device_backend(s, format, backend)
    with capabilities.lowering_for(_target(s)):
        return _artifact_for(model, format, backend, input_shape, example_inputs, weights, use_cache, progress)


@records_request("bench")
def bench(
    model,
    *,
    device: str = "local",
    format: str = "pte",
    backend: Optional[str] = None,
    runner: Optional[str] = None,
    token: Optional[str] = None,
    iterations: int = 20,
    warmup: int = 3,
    min_seconds: float = 0.0,
    max_iterations: int = 0,
    threads: int = 0,
    timeout_s: float = 300.0,
    input_shape: Optional[Sequence[int]] = None,
    example_inputs=None,
    weights: Optional[Union[str, Path]] = None,
    use_cache: bool = True,
    progress: Optional[Progress] = None,
    min_battery_percent: Optional[float] = None,
    max_thermal_status: Optional[int] = None,
    thermal_wait_s: float = 120.0,
    cooldown_s: float = 0.0,
    affinity: str = "all",
    fixed_performance: bool = False,
    idle_s: float = 1.0,
    retries: int = 1,
    session: Optional[MeasureSession] = None,
) -> BenchResult:
    """Lower (or reuse) ``model`` and measure it on ``device``; returns the result record.

    A runner crash, hang or output mismatch comes back as a record with ``ok == False``; a missing
    runner raises before anything is pushed (``measure`` resolves the runner first). The run
    hygiene arguments (battery/thermal thresholds, cooldown, core affinity, Android's
    fixed-performance mode) are checked or applied before the run and recorded in
    ``result.device_state``; a failed check raises DeviceNotReadyError. ``session``: measure on this
    open session (its device and runner; kept open) instead of opening ``device`` for this call,
    as the pytest plugin does for a whole test session.
    """
    config = MeasureConfig(warmup=warmup, iterations=iterations, min_seconds=min_seconds, max_iterations=max_iterations,
                           threads=threads, timeout_s=timeout_s, min_battery_percent=min_battery_percent,
                           max_thermal_status=max_thermal_status, thermal_wait_s=thermal_wait_s, cooldown_s=cooldown_s, affinity=affinity,
                           fixed_performance=fixed_performance, energy_idle_s=idle_s, retries=retries)
    if not capabilities.device_dependent(format, backend):  # a device's delegate (vulkan): once it is open
        capabilities.resolve(format, backend)
    given = _given_artifact(model)
    fmt = given.manifest.format if given else format
    runner = runner or default_runner(fmt)
    def on(s: MeasureSession) -> BenchResult:
        s.check(fmt)
        artifact = given or _artifact_for_device(s, model, format, backend, input_shape, example_inputs, weights,
                                                 use_cache, progress)
        if given is not None and capabilities.device_dependent(fmt, given.manifest.backend):
            _check_device_backend(s, fmt, given.manifest.backend)  # a vulkan .pte needs a device that runs it
        if progress:
            progress(f"measuring on {s.id} ({s.runner} runner): {warmup} warm-up + {iterations} iterations"
                     + (f", at least {min_seconds:g} s" if min_seconds else ""))
        return s.measure(artifact, config)

    if session is not None:
        if session.id != device or session.runner != runner:
            raise UsageError(f"bench: the session is open on {session.id} ({session.runner} runner), but "
                             f"device={device!r} runner={runner!r}: pass the session's own")
        return on(session)
    # one session for the whole command: a bad id, a closed port, a wrong token or a runner that cannot
    # run this format fail here, before lowering (a connection dropped while lowering is re-opened)
    with open_session(device, runner=runner, token=token, log=progress) as opened:
        return on(opened)


@records_request("profile")
def profile(
    model,
    *,
    device: str = "local",
    backend: Optional[str] = None,
    iterations: int = 5,
    warmup: int = 1,
    threads: int = 0,
    timeout_s: float = 300.0,
    input_shape: Optional[Sequence[int]] = None,
    weights: Optional[Union[str, Path]] = None,
    etdump_path: Optional[Union[str, Path]] = None,
    progress: Optional[Progress] = None,
    token: Optional[str] = None,
) -> ProfileReport:
    """Run the native runner with ETDump and return per-operator times from the Inspector.

    Timings from a profiled run include the tracer's overhead; use ``bench`` for latency.
    """
    config = MeasureConfig(warmup=warmup, iterations=iterations, threads=threads, timeout_s=timeout_s)
    with open_session(device, runner="native", token=token, log=progress) as session:
        session.check("pte")  # before lowering
        artifact = _artifact_for(model, "pte", backend, input_shape, None, weights, True, progress)
        return profile_on(session, artifact, config, etdump_path=etdump_path)


def _sweep_fn():
    from edgeprobe.compress.sweep import sweep as fn

    return fn


def _split_fn():
    from edgeprobe.split import plan_split as fn

    return fn


@records_request("sweep", _sweep_fn)
def sweep(model, recipes, **kwargs):
    """Compress ``model`` with each recipe, lower, measure and score it (``edgeprobe.compress.sweep``)."""
    return _sweep_fn()(model, recipes, **kwargs)


def recommend(model, **kwargs):
    """The fastest artifact within an accuracy budget, from measured candidates (``edgeprobe.recommendation``)."""
    from edgeprobe.recommendation import recommend as _recommend

    return _recommend(model, **kwargs)


@records_request("split", _split_fn)
def split(model, **kwargs):
    """Plan (and optionally confirm and verify) an edge/cloud split (``edgeprobe.split.plan_split``)."""
    return _split_fn()(model, **kwargs)


def rerun(request: Request, *, token: Optional[str] = None, progress: Optional[Progress] = None):
    """Run a stored request again, exactly (a record's ``.request``); the token comes from the
    caller or the environment, never from the record."""
    fn = {"bench": bench, "profile": profile, "sweep": sweep, "split": split}.get(request.command)
    if fn is None:
        raise UsageError(f"cannot re-run a {request.command!r} request")
    args = rerun_arguments(request, token=token)
    return fn(**args, progress=progress)


def _label(ref) -> str:
    if isinstance(ref, Artifact):
        m = ref.manifest
        return f"{m.model_ref} ({m.recipe}, {m.backend})"
    return str(ref)


def gate(baseline, candidate, *, device: str = "local", token: Optional[str] = None, runner: Optional[str] = None,
         iterations: int = 20, warmup: int = 3, min_seconds: float = 0.0, threads: int = 0, timeout_s: float = 300.0,
         cooldown_s: float = 0.0, min_battery_percent: Optional[float] = None,
         max_thermal_status: Optional[int] = None, min_launches: int = 10, max_launches: int = 35,
         floor: float = 0.05, floor_rules: Sequence[str] = (), force: bool = False, db=None, history_k: int = 5,
         history_min: int = 3,
         progress: Optional[Progress] = None):
    """The regression gate (``edgeprobe.gate.abba``): ``candidate`` against ``baseline`` on one device.

    Each is what ``bench`` takes (a model, an artifact directory, an Artifact). The baseline may
    instead be stored records (a record file, a directory of them, ``run:ID`` with ``db``) or
    ``"history"`` (the launches of the last ``history_k`` farm runs of the candidate's cell on the
    same OS and runner, at least ``history_min`` of them): then only the candidate is launched. Returns the ``GateRun`` (its ``comparison`` has the outcome)."""
    from edgeprobe.gate import sources
    from edgeprobe.gate.abba import measure_with, run_gate

    stored: list[BenchResult] = []
    from_history = baseline == "history"
    if from_history and db is None:
        raise UsageError("--baseline history needs the farm database (--db or $EDGEPROBE_FARM_DB)")
    if not from_history and isinstance(baseline, (str, Path)) and sources.is_records(str(baseline)):
        cells = sources.load(str(baseline), db)
        if len(cells) != 1:
            raise UsageError(f"{baseline}: a gate baseline is one cell; it holds {len(cells)}: "
                             + ", ".join("/".join(c) for c in cells))
        stored = next(iter(cells.values()))
    config = MeasureConfig(warmup=warmup, iterations=iterations, min_seconds=min_seconds, threads=threads,
                           timeout_s=timeout_s, cooldown_s=cooldown_s, min_battery_percent=min_battery_percent,
                           max_thermal_status=max_thermal_status, retries=0)
    given = _given_artifact(candidate)
    fmt = given.manifest.format if given else "pte"
    with open_session(device, runner=runner or default_runner(fmt), token=token, log=progress) as session:
        session.check(fmt)
        cand = given or _artifact_for(candidate, fmt, None, None, None, None, True, progress)
        done: list[BenchResult] = []
        if from_history:  # one candidate launch first: its OS and runner version pick the history
            done.append(session.measure(cand, config))
            stored, points = sources.history_baseline(db, done[0], k=history_k, min_count=history_min)
            if progress:
                progress(f"baseline from history: {len(stored)} launches of the last {len(points)} farm runs "
                         f"({', '.join(p.run_id for p in points)})")
        base = None if stored else _artifact_for(baseline, fmt, None, None, None, None, True, progress)
        if base is not None and base.manifest.format != cand.manifest.format:
            raise UsageError(f"the baseline is a .{base.manifest.format} and the candidate a "
                             f".{cand.manifest.format}: a gate compares one format on one runner")
        labels = (_label(baseline), _label(candidate))
        return run_gate(measure_with(session, base, cand, config), stored_baseline=stored, candidate_done=done,
                        min_launches=min_launches, max_launches=max_launches, floor=floor, floor_rules=floor_rules,
                        force=force,
                        labels=labels, log=progress)
