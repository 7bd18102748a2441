"""Result records: frozen dataclasses, JSON with ``schema_version``; importing this needs no torch.

The runner reports raw samples (``iteration_ns``); every statistic is derived on the host, so a
record can be re-analysed later without re-measuring: latency statistics here, energy per
inference in ``energy.py`` (``EnergyReading.estimate`` delegates to it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from edgeprobe import energy
from edgeprobe.energy import EnergyEstimate, RailEstimate  # noqa: F401 - re-exported: estimates of a reading
from edgeprobe.errors import ResultError
from edgeprobe.request import Request

SCHEMA_VERSION = 1


# ---------------------------------------------------------------- statistics


def percentile(sorted_values: typing.Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def trimmed_mean(sorted_values: typing.Sequence[float], proportion: float = 0.1) -> float:
    """Mean after cutting ``proportion`` of the samples from each end (scipy.stats.trim_mean)."""
    cut = int(proportion * len(sorted_values))
    kept = sorted_values[cut : len(sorted_values) - cut] or sorted_values
    return sum(kept) / len(kept)


def stability_score(cv_percent: float, max_min_ratio: float, p99_p50_ratio: float) -> float:
    """ExecuTorch's benchmark stability score, 0..100 (.ci/scripts/benchmark_tooling).

    0.5 * CV score (CV of 10 % or more scores 0) + 0.25 * max/min score (ratio 3 scores 0)
    + 0.25 * p99/p50 score (ratio 2 scores 0).
    """
    cv_score = max(0.0, 100.0 - cv_percent * 10.0)
    max_min_score = 0.0 if math.isinf(max_min_ratio) else max(0.0, 100.0 - (max_min_ratio - 1) * 50.0)
    p99_p50_score = max(0.0, 100.0 - (p99_p50_ratio - 1) * 100.0)
    return 0.5 * cv_score + 0.25 * max_min_score + 0.25 * p99_p50_score


@dataclass(frozen=True)
class LatencyStats:
    """Statistics derived from raw per-iteration samples (never stored, always recomputed)."""

    n: int
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    trimmed_mean_ms: float
    cv_percent: float
    stability_score: float

    @classmethod
    def from_ns(cls, samples_ns: typing.Sequence[int]) -> "LatencyStats":
        if not samples_ns:
            raise ValueError("no latency samples")
        ms = sorted(s / 1e6 for s in samples_ns)
        n = len(ms)
        mean = sum(ms) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in ms) / (n - 1)) if n > 1 else 0.0
        cv = std / mean * 100.0 if mean > 0 else 0.0
        p50, p99 = percentile(ms, 50), percentile(ms, 99)
        max_min = ms[-1] / ms[0] if ms[0] > 0 else math.inf
        return cls(
            n=n,
            mean_ms=mean,
            std_ms=std,
            min_ms=ms[0],
            max_ms=ms[-1],
            p50_ms=p50,
            p90_ms=percentile(ms, 90),
            p99_ms=p99,
            trimmed_mean_ms=trimmed_mean(ms, 0.1),
            cv_percent=cv,
            stability_score=stability_score(cv, max_min, p99 / p50 if p50 > 0 else math.inf),
        )

    @property
    def unstable_reason(self) -> Optional[str]:
        """Why these samples do not make a stable figure (None when they do): a CV above
        STABLE_MAX_CV_PERCENT or a stability score below STABLE_MIN_SCORE."""
        why = []
        if self.cv_percent > STABLE_MAX_CV_PERCENT:
            why.append(f"CV {self.cv_percent:.1f} % > {STABLE_MAX_CV_PERCENT:g} %")
        if self.stability_score < STABLE_MIN_SCORE:
            why.append(f"stability {self.stability_score:.0f}/100 < {STABLE_MIN_SCORE:g}")
        return "; ".join(why) or None


STABLE_MAX_CV_PERCENT = 5.0  # above this, a latency figure is flagged as not stable
STABLE_MIN_SCORE = 60.0  # ... and below this stability score


# ---------------------------------------------------------------- record parts


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Manifest:
    """What an artifact is; written next to it as manifest.json. Nothing is parsed from names."""

    model_ref: str
    recipe: str
    target: str  # executorch | torchscript_lite
    backend: str  # xnnpack | portable | cpu
    format: str  # pte | ptl
    artifact_file: str
    artifact_sha256: str
    artifact_size_bytes: int
    vectors_file: str
    vectors_sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    rtol: float
    atol: float
    planned_memory_bytes: tuple[int, ...]  # ExecuTorch MethodMeta memory-planned buffers; () for ptl
    tool_versions: dict[str, str]
    cache_key: str
    created_utc: str
    etrecord_file: Optional[str] = None
    notes: tuple[str, ...] = ()
    compression: tuple[dict[str, Any], ...] = ()  # the recipe's steps: {recipe, params, summary, notes}
    schema_version: int = SCHEMA_VERSION

    @property
    def planned_memory_total_bytes(self) -> int:
        return sum(self.planned_memory_bytes)


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    message: str
    stderr_tail: Optional[str] = None


@dataclass(frozen=True)
class RunnerInfo:
    flavor: str  # native | python
    version: str
    runtime: str
    runtime_version: str


@dataclass(frozen=True)
class RunConfig:
    method: str
    warmup: int
    iterations: int
    min_seconds: float
    threads_requested: int
    threads_used: Optional[int]
    loader: str
    etdump: bool


@dataclass(frozen=True)
class Verification:
    checked: bool
    passed: Optional[bool]
    testsets: int = 0
    rtol: Optional[float] = None
    atol: Optional[float] = None
    max_abs_error: Optional[float] = None
    reason: Optional[str] = None


@dataclass(frozen=True)
class Timing:
    load_ms: Optional[float]
    first_inference_ms: Optional[float]
    iteration_ns: tuple[int, ...] = ()

    @property
    def stats(self) -> Optional[LatencyStats]:
        return LatencyStats.from_ns(self.iteration_ns) if self.iteration_ns else None


@dataclass(frozen=True)
class Memory:
    baseline_rss_bytes: Optional[int]
    baseline_hwm_bytes: Optional[int]
    peak_rss_bytes: Optional[int]
    swap_bytes: Optional[int]
    source: str = "/proc/self/status VmHWM"
    hwm_reset: Optional[bool] = None  # the runner reset VmHWM to VmRSS before its baseline (absent: older runner)
    peak_rss_definition: Optional[str] = None  # the runner's words for peak_rss_delta_bytes (absent: older runner)

    @property
    def peak_rss_delta_bytes(self) -> Optional[int]:
        """Peak resident memory above the runner's own pre-load baseline: high-water mark after the run
        minus high-water mark before the model was loaded (``peak_rss_definition`` says how exact that
        is). A record without a baseline HWM falls back to the baseline VmRSS."""
        baseline = self.baseline_hwm_bytes if self.baseline_hwm_bytes is not None else self.baseline_rss_bytes
        if self.peak_rss_bytes is None or baseline is None:
            return None
        return self.peak_rss_bytes - baseline


@dataclass(frozen=True)
class OdpmSnapshot:
    """Raw ``dumpsys android.hardware.power.stats.IPowerStats/default`` text taken at a window edge."""

    window: str  # idle_start | run_start | run_end
    t_start_s: float  # CLOCK_MONOTONIC just before the call
    t_end_s: float  # ... and just after it: the counters were read in between
    text: str = ""  # the output's last 64 KiB (the energy meter section is printed last)
    size_bytes: Optional[int] = None  # the whole output's size
    truncated: bool = False


@dataclass(frozen=True)
class OdpmCapture:
    """The runner's ODPM snapshots (device_runner/PROTOCOL.md ``energy.odpm``); parsed on the host."""

    available: bool
    reason: Optional[str] = None
    service: Optional[str] = None
    snapshots: tuple[OdpmSnapshot, ...] = ()


@dataclass(frozen=True)
class EnergyReading:
    available: bool  # the sysfs meter (rapl | battery); ODPM is reported in ``odpm``
    reason: Optional[str] = None
    meter: Optional[str] = None
    energy_j: Optional[float] = None  # run window; None for battery (derived from raw_samples)
    duration_s: Optional[float] = None  # run window
    samples: Optional[int] = None
    method: Optional[str] = None
    domains: dict[str, float] = field(default_factory=dict)
    idle_energy_j: Optional[float] = None  # rapl: the idle baseline window
    idle_duration_s: Optional[float] = None
    window: dict[str, float] = field(default_factory=dict)  # CLOCK_MONOTONIC idle_start_s/run_start_s/run_end_s
    supply: Optional[str] = None
    supply_status: Optional[str] = None  # battery sysfs status: Charging | Discharging | Full | Not charging
    charger_online: Optional[bool] = None
    raw_samples: tuple[tuple[float, ...], ...] = ()  # battery: (t_s, current_now, voltage_now) as read
    samples_dropped: Optional[int] = None  # battery samples whose read was interrupted (time stamp unknown)
    odpm: Optional[OdpmCapture] = None  # Android ODPM rails, raw dumpsys snapshots (absent from older runners)

    def energy_per_inference_j(self, iterations: int) -> Optional[float]:
        est = self.estimate(iterations)
        return est.per_inference_j if est else None

    def estimate(self, iterations: int) -> Optional[EnergyEstimate]:
        """Energy per inference with its method, calibration and 1-sigma uncertainty; None when
        no meter was available (``energy.estimate``: ODPM preferred unless only it is unreliable)."""
        return energy.estimate(self, iterations)

    def estimates(self, iterations: int) -> dict[str, EnergyEstimate]:
        """Every meter's estimate, keyed by meter: ``odpm`` and/or ``battery`` | ``rapl`` (``energy.estimates``)."""
        return energy.estimates(self, iterations)


@dataclass(frozen=True)
class ThermalReading:
    available: bool
    reason: Optional[str] = None
    before_c: dict[str, float] = field(default_factory=dict)
    after_c: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Environment:
    os: Optional[str] = None
    kernel: Optional[str] = None
    machine: Optional[str] = None
    cpu_model: Optional[str] = None
    cores: Optional[int] = None
    hostname: Optional[str] = None


@dataclass(frozen=True)
class DeviceInfo:
    id: str
    transport: str
    runner_flavor: str
    description: str = ""
    health: str = ""  # "ok ...", or why the device cannot be used now


@dataclass(frozen=True)
class DeviceState:
    """Device conditions before (and thermal status after) a run, and the run hygiene applied.

    ``source`` names how they were read; a field the device could not report is None, never 0.
    """

    source: str
    cpu_max_freq_khz: tuple[Optional[int], ...] = ()
    cpu_capacity: tuple[Optional[int], ...] = ()
    big_cores: tuple[int, ...] = ()
    battery_level_percent: Optional[int] = None
    battery_temperature_c: Optional[float] = None
    charging: Optional[bool] = None
    thermal_status: Optional[int] = None  # Android THERMAL_STATUS_*: 0 none .. 6 shutdown
    thermal_status_after: Optional[int] = None
    affinity_cores: tuple[int, ...] = ()  # () = not pinned
    fixed_performance: str = "off"  # off | on | unavailable: <reason>
    cooldown_waited_s: float = 0.0
    notes: tuple[str, ...] = ()
    cpu_load: Optional[CpuLoad] = None  # what else used the CPU during the run (absent from older records)


@dataclass(frozen=True)
class ProcessCpu:
    name: str
    pid: int
    cores: float  # CPU time during the window / the window's length: 1.0 = one core busy throughout


@dataclass(frozen=True)
class CpuLoad:
    """CPU use on the device during the run window, from /proc/stat and /proc/<pid>/stat read
    before and after it (devices/hygiene.py). ``busy_cores`` counts every process, the runner
    included; ``others`` only processes alive at both readings (so not the runner, nor anything
    that started during the run), busiest first."""

    available: bool
    reason: Optional[str] = None
    window_s: Optional[float] = None
    cores: Optional[int] = None
    loadavg_1m_before: Optional[float] = None
    busy_cores: Optional[float] = None  # all CPUs, averaged over the window
    others_cores: Optional[float] = None  # sum over the visible processes that were there before the run
    others: tuple[ProcessCpu, ...] = ()  # the busiest of them
    processes_seen: Optional[int] = None


@dataclass(frozen=True)
class RunRecord:
    """What one runner process reports (device_runner/PROTOCOL.md)."""

    status: str  # ok | error
    error: Optional[ErrorInfo]
    runner: Optional[RunnerInfo]
    config: Optional[RunConfig]
    verification: Optional[Verification]
    timing: Optional[Timing]
    memory: Optional[Memory]
    energy: Optional[EnergyReading]
    thermal: Optional[ThermalReading]
    environment: Optional[Environment]
    artifact_size_bytes: Optional[int] = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_runner_json(cls, data: dict[str, Any]) -> "RunRecord":
        """Parse the runner's JSON (PROTOCOL.md), which nests the artifact size under 'artifact'."""
        if not isinstance(data, dict):
            raise ResultError("runner record is not a JSON object")
        data = dict(data)
        artifact = data.pop("artifact", None) or {}
        if not isinstance(artifact, dict):
            raise ResultError(f"RunRecord.artifact: expected an object, got {type(artifact).__name__}")
        data["artifact_size_bytes"] = artifact.get("size_bytes")
        return from_dict(cls, data)


@dataclass(frozen=True)
class BenchResult:
    """One measurement of one artifact on one device: the record edgeprobe stores and shows."""

    model_ref: str
    device: DeviceInfo
    manifest: Manifest
    run: RunRecord
    host_versions: dict[str, str]
    created_utc: str
    device_state: Optional[DeviceState] = None
    request: Optional[Request] = None  # the command and every argument that produced this record
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.run.status == "ok"

    @property
    def stats(self) -> Optional[LatencyStats]:
        return self.run.timing.stats if self.run.timing else None

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchResult":
        """Check the record's own ``schema_version`` (exactly this reader's), then every nested one on
        the way (manifest, runner record, request: refused when newer than this reader knows)."""
        version = data.get("schema_version") if isinstance(data, dict) else None
        if type(version) is int and version > SCHEMA_VERSION:
            raise ResultError(f"result has schema_version {_short(version)}; this edgeprobe reads up to "
                              f"{SCHEMA_VERSION}: upgrade edgeprobe")
        if version != SCHEMA_VERSION:
            raise ResultError(
                f"result has schema_version {_short(version)}; this edgeprobe reads version {SCHEMA_VERSION}"
            )
        return from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> "BenchResult":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits, too deep
            raise ResultError(f"result is not valid JSON: {str(exc)[:200]}") from None
        return cls.from_dict(data)

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically (temp file beside it, fsync, rename): a kill leaves the old file or this one."""
        from edgeprobe.fsutil import atomic_write_text

        return atomic_write_text(path, self.to_json() + "\n", fault="result-save")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "BenchResult":
        path = Path(path)
        if not path.is_file():
            raise ResultError(f"no result file at {path}")
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultError(f"cannot read the result file {path}: {str(exc)[:200]}") from None
        return cls.from_json(text)


# ---------------------------------------------------------------- (de)serialisation


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _convert(tp: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, where) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ResultError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_convert(args[0], v, f"{where}[]") for v in value)
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ResultError(f"{where}: expected an object, got {type(value).__name__}")
        return {str(k): _convert(vt, v, f"{where}.{_key(k)}") for k, v in value.items()}
    if tp in (int, float) and isinstance(value, int) and not isinstance(value, bool) \
            and not -2 ** 63 <= value < 2 ** 64:  # beyond what a runner writes (and float() would raise)
        raise ResultError(f"{where}: {tp.__name__} out of range, got {_short(value)}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is not bool and isinstance(value, bool))):
        raise ResultError(f"{where}: expected {tp.__name__}, got {_short(value)}")
    return value


def _short(value: Any, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters, so an error message stays one short line."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= width else text[:width - 3] + "..."


def _key(k: Any) -> str:
    """An object key as it appears in an error's path: as is when plain, else its short repr
    (a key can hold a newline)."""
    k = str(k)
    return k if k.isprintable() and len(k) <= 60 else _short(k)


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints`` once per class: evaluating the string annotations on every record
    was 80 % of reading one."""
    return typing.get_type_hints(cls)


@functools.lru_cache(maxsize=None)
def _known_version(cls: type) -> Optional[int]:
    """The newest ``schema_version`` this reader knows for ``cls``: the default of its
    ``schema_version`` field (Manifest, RunRecord, BenchResult, Request); None without one."""
    f = next((f for f in dataclasses.fields(cls) if f.name == "schema_version"), None)
    return f.default if f is not None and type(f.default) is int else None


def _check_version(cls: type, data: dict[str, Any], where: str) -> None:
    """Refuse a record (or a nested part) written by a newer edgeprobe, before reading its fields:
    a newer version may have changed them, and the reason should be the version, not a field."""
    known, version = _known_version(cls), data.get("schema_version")
    if known is not None and "schema_version" in data and type(version) is not int:  # null too: never a version
        raise ResultError(f"{where}.schema_version: expected int, got {_short(version)}")
    if known is not None and type(version) is int and version > known:
        raise ResultError(f"{where} has schema_version {_short(version)}; this edgeprobe reads up to {known}: "
                          "upgrade edgeprobe")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build a (nested) frozen dataclass from plain JSON data, checking types on the way, and the
    ``schema_version`` of every part that has one (``_check_version``; a class's own
    ``check_version()``, as Request has, is called on the result)."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ResultError(f"{where}: expected an object, got {type(data).__name__}")
    _check_version(cls, data, where)
    hints = _type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ResultError(f"{where}: missing field {f.name!r}")
    obj = cls(**kwargs)
    check = getattr(obj, "check_version", None)
    if callable(check):
        check()
    return obj
