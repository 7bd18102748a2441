"""Result records: frozen dataclasses, JSON with ``schema_version``; importing this needs no torch.

The runner reports raw samples (``iteration_ns``); every statistic is derived here, on the host,
so a record can be re-analysed later without re-measuring.
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
class RailEstimate:
    """One ODPM rail's share of an EnergyEstimate (same arithmetic as the total)."""

    idle_power_w: Optional[float]
    run_power_w: float
    per_inference_j: Optional[float]
    uncertainty_j: Optional[float]


@dataclass(frozen=True)
class EnergyEstimate:
    """Energy per inference derived on the host from an EnergyReading (see ``EnergyReading.estimate``)."""

    per_inference_j: Optional[float]  # (run power - idle power) x run time / iterations; None without a baseline
    uncertainty_j: Optional[float]  # 1 sigma of per_inference_j (sample spread, or counter resolution + timing for ODPM)
    gross_per_inference_j: Optional[float]  # run energy / iterations, idle not subtracted
    idle_power_w: Optional[float]
    run_power_w: Optional[float]
    method: str
    calibration: str
    reliable: bool
    reason: Optional[str] = None  # why it is unreliable
    meter: Optional[str] = None  # odpm | battery | rapl
    rails: dict[str, RailEstimate] = field(default_factory=dict)  # odpm: per rail ("[S2M_VDD_CPUCL2]:CPU(BIG)")
    notes: tuple[str, ...] = ()  # caveats that do not make the number unreliable


BATTERY_MA_BELOW = 10_000  # |idle current_now| below this is in mA, not µA (no phone idles under 10 mA)
BATTERY_MV_BELOW = 100_000  # voltage_now below this is in mV, not µV


def _mean_var(xs: typing.Sequence[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0)


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
        """Energy per inference = (run power - idle power) x run time / iterations, with the method,
        the calibration applied and a 1-sigma uncertainty; None when no meter was available.

        ODPM is preferred when its rails parse (it meters the rails directly, with counters, and a
        charger does not enter them), unless it is unreliable and the sysfs meter (RAPL or
        battery) is not. Both stay in the record: ``estimates`` gives every meter's estimate."""
        found = self.estimates(iterations)
        odpm = found.get("odpm")
        odpm = odpm if odpm is not None and odpm.run_power_w is not None else None
        sysfs = found.get(self.meter or "")
        if odpm is not None and (odpm.reliable or sysfs is None or not sysfs.reliable):
            return odpm
        return sysfs or found.get("odpm")

    def estimates(self, iterations: int) -> dict[str, EnergyEstimate]:
        """Every meter's estimate, keyed by meter: ``odpm`` and/or ``battery`` | ``rapl``."""
        out: dict[str, EnergyEstimate] = {}
        if self.odpm is not None and self.odpm.snapshots and iterations > 0:
            out["odpm"] = self._odpm_estimate(iterations)
        sysfs = self._sysfs_estimate(iterations)
        if sysfs is not None:
            out[sysfs.meter or "sysfs"] = sysfs
        return out

    def _sysfs_estimate(self, iterations: int) -> Optional[EnergyEstimate]:
        if not self.available or iterations <= 0 or not self.duration_s:
            return None
        if self.meter == "battery":
            return self._battery_estimate(iterations)
        gross = self.energy_j / iterations if self.energy_j is not None else None
        run_w = self.energy_j / self.duration_s if self.energy_j is not None else None
        if self.idle_energy_j is None or not self.idle_duration_s or run_w is None:
            return EnergyEstimate(None, None, gross, None, run_w, f"{self.method}; no idle baseline", "none", False,
                                  "no idle baseline was measured (--idle-s 0)", meter=self.meter)
        idle_w = self.idle_energy_j / self.idle_duration_s
        net = (run_w - idle_w) * self.duration_s / iterations
        return EnergyEstimate(net, None, gross, idle_w, run_w, f"{self.method}; idle window subtracted", "none "
                              "(counters in µJ)", True, None, meter=self.meter)

    def _charging(self) -> bool:
        return bool(self.charger_online) or (self.supply_status or "").lower() in ("charging", "full")

    def _odpm_estimate(self, iterations: int) -> EnergyEstimate:
        from edgeprobe.odpm import odpm_estimate

        return odpm_estimate(self.odpm, iterations, charging=self._charging())

    def _battery_estimate(self, iterations: int) -> EnergyEstimate:
        w = self.window
        # idle_end_s (newer runners): an ODPM snapshot between the windows belongs to neither
        idle = [s for s in self.raw_samples if w and w["idle_start_s"] <= s[0] < w.get("idle_end_s", w["run_start_s"])]
        run = [s for s in self.raw_samples if w and w["run_start_s"] <= s[0] <= w["run_end_s"]]
        method = "battery current_now x voltage_now, 10 ms samples; (run - idle) power x run time / iterations"
        if not run:
            return EnergyEstimate(None, None, None, None, None, method, "none", False,
                                  "no battery samples fell in the run window (the run was shorter than 10 ms?)",
                                  meter="battery")
        ref = idle or run
        med_i = sorted(s[1] for s in ref)[len(ref) // 2]
        med_v = sorted(s[2] for s in ref)[len(ref) // 2]
        i_scale, i_unit = (1e-3, "mA") if abs(med_i) < BATTERY_MA_BELOW else (1e-6, "µA")
        v_scale, v_unit = (1e-3, "mV") if med_v < BATTERY_MV_BELOW else (1e-6, "µV")
        sign = -1.0 if med_i < 0 else 1.0  # discharge current counted positive
        calibration = (f"current in {i_unit}, voltage in {v_unit} (by magnitude); discharge sign "
                       f"{'negative' if sign < 0 else 'positive'} (from the {'idle' if idle else 'run'} median)")
        power = lambda xs: [sign * s[1] * i_scale * s[2] * v_scale for s in xs]  # noqa: E731
        run_w, run_var = _mean_var(power(run))
        gross = run_w * self.duration_s / iterations
        problems = []
        if self._charging():
            problems.append("a charger is connected (USB?): the battery current includes the charger's")
        if med_i == 0:
            problems.append("the battery current reads 0: no calibration possible")
        if not idle:
            problems.append("no idle baseline was measured (--idle-s 0)")
            return EnergyEstimate(None, None, gross, None, run_w, method, calibration, False, "; ".join(problems),
                                  meter="battery")
        idle_w, idle_var = _mean_var(power(idle))
        net = (run_w - idle_w) * self.duration_s / iterations
        sigma = (run_var / len(run) + idle_var / len(idle)) ** 0.5 * self.duration_s / iterations
        return EnergyEstimate(net, sigma, gross, idle_w, run_w, method, calibration, not problems,
                              "; ".join(problems) or None, meter="battery")


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
        version = data.get("schema_version") if isinstance(data, dict) else None
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


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build a (nested) frozen dataclass from plain JSON data, checking types on the way."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ResultError(f"{where}: expected an object, got {type(data).__name__}")
    hints = _type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ResultError(f"{where}: missing field {f.name!r}")
    return cls(**kwargs)
