"""Result records: frozen dataclasses, JSON with ``schema_version``; importing this needs no torch.

The runner reports raw samples (``iteration_ns``); every statistic is derived on the host, so a
record can be re-analysed later without re-measuring: latency statistics in ``latency.py``, energy
per inference in ``energy.py`` (``EnergyReading.estimate`` delegates to it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from edgeprobe import energy
from edgeprobe.energy import EnergyEstimate, RailEstimate  # noqa: F401 - re-exported: estimates of a reading
from edgeprobe.errors import ResultError
from edgeprobe.latency import (  # noqa: F401 - re-exported: derived from a record's samples
    STABLE_MAX_CV_PERCENT, STABLE_MIN_SCORE, LatencyStats, percentile, stability_score, trimmed_mean)
from edgeprobe.request import Request
from edgeprobe.serde import _short, from_dict, parse_json, read_text_file, to_dict  # noqa: F401 - from_dict/to_dict re-exported

SCHEMA_VERSION = 1


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
class RuntimeBuild:
    """Which build of the runtime ran: its main native library and the compilers named in its ELF
    ``.comment`` (two wheels of one version can differ by the compiler of their micro-kernels)."""

    library: str  # file name, e.g. libexecutorch_backend_xnnpack.so
    compilers: tuple[str, ...]  # distinct strings, e.g. "GCC: (GNU) 13.3.1 20240611 (Red Hat 13.3.1-2)"
    source: str = ".comment"


@dataclass(frozen=True)
class RunnerInfo:
    flavor: str  # native | python | app (the edgeprobe Android app's in-process runner)
    version: str
    runtime: str
    runtime_version: str
    build: Optional[RuntimeBuild] = None  # None: unknown (build_reason says why) or a runner older than the field
    build_reason: Optional[str] = None
    delegate: Optional[str] = None  # the app runner's ExecuTorch delegate (xnnpack, vulkan, qnn); None: not said


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
    max_iterations: Optional[int] = None  # the timed loop's cap (None: none, or an older runner)
    threads_note: Optional[str] = None  # why threads_used is null (a runtime that does not report its pool)


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
        result = from_dict(cls, data)
        # serde reads a null nested part as "left out"; a bench result without its device, manifest or
        # run record is not a result (the fuzz test found `"run": null` accepted, then r.run.timing crashed)
        for name in ("device", "manifest", "run"):
            if getattr(result, name) is None:
                raise ResultError(f"BenchResult.{name}: expected an object, got null")
        return result

    @classmethod
    def from_json(cls, text: str) -> "BenchResult":
        return cls.from_dict(parse_json(text, "result"))

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically (temp file beside it, fsync, rename): a kill leaves the old file or this one."""
        from edgeprobe.fsutil import atomic_write_text

        return atomic_write_text(path, self.to_json() + "\n", fault="result-save")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "BenchResult":
        return cls.from_json(read_text_file(path, "result"))
