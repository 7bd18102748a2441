"""The one measurement path: an open device, its deployed runner and its hygiene state, measuring
any number of artifacts.

``with open_session("adb:SERIAL") as s: s.measure(artifact, config)`` opens the device once,
deploys (and verifies) its runner bundle once per artifact format, reads the device's description
once and keeps Android's fixed-performance mode on across runs; the battery, thermal and cooldown
gates and the CPU-load readings stay per run, because they describe that run. ``bench``, ``profile``,
``sweep``, split's confirm and verify steps and the farm all measure through a session.

One measurement: push the artifact (``{workdir}/{cache_key}/``, skipped when the device already
holds it by sha256, verified before running) -> run the runner in a fresh process with a timeout,
in a run directory of its own -> pull the record. A runner that crashes or hangs becomes an error
record with its stderr tail, never a hang or a number.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import shlex
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from edgeprobe import versions
from edgeprobe.devices.base import RECONNECT, REMOVE, SHA256, SHELL, RunResult, Transport
from edgeprobe.devices.deploy import push_if_changed
from edgeprobe.devices.hygiene import PerformanceMode
from edgeprobe.devices.hygiene import Session as RunHygiene
from edgeprobe.devices.registry import Device, open_device
from edgeprobe.errors import ResultError, TransportError, UsageError
from edgeprobe.results import BenchResult, DeviceInfo, ErrorInfo, RunRecord

if TYPE_CHECKING:  # the artifact type only: reading lower/ would import torch
    from edgeprobe.lower import Artifact

Log = Callable[[str], None]


@dataclass(frozen=True)
class MeasureConfig:
    warmup: int = 3
    iterations: int = 20
    min_seconds: float = 0.0
    max_iterations: int = 0  # 0: no cap; else the timed loop stops there even before min_seconds
    threads: int = 0
    timeout_s: float = 300.0
    method: str = "forward"
    # run hygiene (devices/hygiene.py); all recorded in the result's device_state
    min_battery_percent: Optional[float] = None
    max_thermal_status: Optional[int] = None  # Android THERMAL_STATUS_*: 0 none, 1 light, 2 moderate, ...
    thermal_wait_s: float = 120.0  # how long to wait for the thermal status to fall before failing
    cooldown_s: float = 0.0  # idle time before the run
    affinity: str = "all"  # all | big | a core list such as 4-7
    fixed_performance: bool = False  # Android `cmd power set-fixed-performance-mode-enabled`
    energy_idle_s: float = 1.0  # idle baseline before the timed loop, subtracted from the run's power
    retries: int = 1  # runs repeated after a connection lost mid-run (transports that can reconnect)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.iterations < 1 or self.min_seconds < 0 or self.threads < 0:
            raise UsageError("need --warmup >= 0, --iterations >= 1, --min-seconds >= 0, --threads >= 0")
        if self.max_iterations and self.max_iterations < self.iterations:
            raise UsageError("--max-iterations must be 0 (no cap) or >= --iterations")
        if self.timeout_s <= 0:
            raise UsageError("--timeout-s must be positive")
        if self.retries < 0:
            raise UsageError("--retries must be >= 0")
        if self.cooldown_s < 0 or self.thermal_wait_s < 0 or self.energy_idle_s < 0:
            raise UsageError("--cooldown-s, --thermal-wait-s and --idle-s must be >= 0")
        if self.min_battery_percent is not None and not 0 <= self.min_battery_percent <= 100:
            raise UsageError("--min-battery is a percentage, 0..100")
        if self.max_thermal_status is not None and not 0 <= self.max_thermal_status <= 6:
            raise UsageError("--max-thermal-status is Android's THERMAL_STATUS_*, 0 (none) .. 6 (shutdown)")




def _error_record(code: str, message: str, stderr_tail: Optional[str] = None) -> RunRecord:
    return RunRecord(status="error", error=ErrorInfo(code, message, stderr_tail), runner=None, config=None,
                     verification=None, timing=None, memory=None, energy=None, thermal=None, environment=None)


def _record_from(res: RunResult, out_path: Path, timeout_s: float) -> RunRecord:
    tail = res.stderr_tail()
    if res.timed_out:
        return _error_record("runner_timeout", f"runner did not finish within {timeout_s:g} s and was killed; "
                             "raise --timeout-s or lower --iterations", tail)
    if res.exit_code != 0:
        how = f"signal {-res.exit_code}" if res.exit_code is not None and res.exit_code < 0 else f"exit code {res.exit_code}"
        return _error_record("runner_crashed", f"runner ended with {how} before writing a record", tail)
    try:
        data = json.loads(out_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return _error_record("bad_record", f"runner exited 0 but its record is unreadable: {exc}", tail)
    try:
        record = RunRecord.from_runner_json(data)
    except ResultError as exc:
        return _error_record("bad_record", f"runner record does not match the schema: {exc}", tail)
    if record.error is not None and tail:
        record = dataclasses.replace(record, error=dataclasses.replace(record.error, stderr_tail=tail))
    return record


def _run_with_retry(device: Device, argv: list[str], config: MeasureConfig, sha256: str, remote_model: str,
                    log: Optional[Callable[[str], None]]) -> tuple[RunResult, Optional[str]]:
    """Run once; if the connection drops mid-run and the transport can reconnect, reconnect,
    re-check the artifact's sha256 on the device and run again, ``config.retries`` times.
    Returns the result and, when the run was repeated, why."""
    t = device.transport
    failures: list[str] = []
    for attempt in range(config.retries + 1):
        try:
            res = t.run(argv, config.timeout_s)
            return res, (f"run retried after: {'; '.join(failures)}" if failures else None)
        except TransportError as exc:
            failures.append(str(exc))
            if RECONNECT not in t.capabilities or attempt == config.retries:
                break
            if log:
                log(f"connection lost during the run ({exc}); reconnecting (retry {attempt + 1}/{config.retries})")
            try:
                t.reconnect()
            except TransportError as again:
                failures.append(str(again))
                break
            if SHA256 in t.capabilities and t.sha256(remote_model) != sha256:
                raise TransportError(f"{device.id}: after reconnecting, the artifact on the device no longer "
                                     "matches its sha256; not running it")
    raise TransportError(f"{device.id}: the run failed {len(failures)} time(s) with the connection lost: "
                         f"{failures[-1]}")


def _new_run_dir(t: Transport) -> str:
    """A directory of its own for one run's outputs (record, ETDump, saved outputs): the artifact
    directory is shared by every bench of that artifact and, on a TCP runner, by all its clients, so
    fixed output names there let concurrent runs exchange records and a runner that writes nothing
    return the previous run's. Made empty; the transports' ``push`` creates parent directories, and
    a TCP runner offers no other way to make one."""
    path = f"{t.workdir}/runs/{uuid.uuid4().hex}"
    if t.kind == "local":
        Path(path).mkdir(parents=True)
    elif SHELL in t.capabilities:
        q = shlex.quote(path)
        t.shell(f"rm -rf {q}; mkdir -p {q}")
    else:
        with tempfile.TemporaryDirectory(prefix="edgeprobe-run-") as tmp:
            marker = Path(tmp) / ".run"
            marker.write_bytes(b"")
            t.push(marker, f"{path}/.run")
    return path


RUN_FILES = (".run", "result.json", "result.json.tmp", "run.etdump", "outputs.epv")


def _remove_run_dir(t: Transport, path: str) -> None:
    """Best effort, after the outputs are pulled. A transport without a shell removes the files it
    can name (``remove``, one file each, where it has one); the empty directory stays."""
    try:
        if t.kind == "local":
            shutil.rmtree(path, ignore_errors=True)
        elif SHELL in t.capabilities:
            t.shell(f"rm -rf {shlex.quote(path)}")
        elif REMOVE in t.capabilities:
            for name in RUN_FILES:
                try:
                    t.remove(f"{path}/{name}")
                except Exception:  # noqa: BLE001 - most runs write only some of them
                    pass
    except Exception:  # noqa: BLE001 - the record is already pulled; a leftover dir is harmless
        pass


@dataclass
class SessionStats:
    """What a session did, for the progress log and the benchmarks (counts, and seconds spent)."""

    open_s: float = 0.0  # opening the device (connect, authenticate)
    deploy_s: float = 0.0  # resolving and deploying runners (bundle verify + pushes)
    deploys: int = 0
    measurements: int = 0
    artifact_pushes: int = 0  # artifact files actually sent (not already on the device)


class MeasureSession:
    """An open device plus what is set up on it once: the runner command per artifact format
    (the native bundle deployed and verified on first use), the device's description and
    Android's fixed-performance mode. ``measure`` may be called any number of times; ``close``
    (or the ``with`` block) switches the performance mode off and closes the transport."""

    def __init__(self, device: Device, *, log: Optional[Log] = None) -> None:
        self.device = device
        self.log = log
        self.stats = SessionStats()
        self._runner_argv: dict[str, list[str]] = {}
        self._info: Optional[DeviceInfo] = None
        self._performance = PerformanceMode(device.transport)
        self._closed = False

    @property
    def id(self) -> str:
        return self.device.id

    @property
    def transport(self) -> Transport:
        return self.device.transport

    @property
    def runner(self) -> str:
        return self.device.runner

    def info(self) -> DeviceInfo:
        if self._info is None:
            self._info = self.device.info()
        return self._info

    def check(self, format: str) -> None:
        """Fail now if this device's runner cannot run a ``format`` artifact (before any lowering)."""
        self.device.check_runner(format)

    def runner_argv(self, format: str) -> list[str]:
        """The runner command for ``format``, deployed on first use and remembered."""
        if format not in self._runner_argv:
            t0 = time.monotonic()
            self._runner_argv[format] = self.device.runner_argv(format)
            self.stats.deploy_s += time.monotonic() - t0
            self.stats.deploys += 1
        return list(self._runner_argv[format])

    def reconnect(self) -> None:
        """Re-open a dropped connection (transports that can); the deployed runner stays valid only
        if the device kept its files, so it is verified again on next use."""
        self.transport.reconnect()
        self._runner_argv.clear()

    def measure(self, artifact: "Artifact", config: "MeasureConfig" = MeasureConfig(), *,
                etdump_local: Optional[Path] = None, save_outputs_local: Optional[Path] = None,
                extra_args: Sequence[str] = (), log: Optional[Log] = None) -> BenchResult:
        """Measure ``artifact`` in one fresh runner process; returns the full record."""
        if self._closed:
            raise UsageError("this measurement session is closed")
        self.stats.measurements += 1
        return _measure(self, artifact, config, etdump_local=etdump_local, save_outputs_local=save_outputs_local,
                        extra_args=extra_args, log=log or self.log)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._performance.off()
        finally:
            self.device.close()

    def __enter__(self) -> "MeasureSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_session(device_id: str = "local", *, runner: str = "native", token: Optional[str] = None,
                 log: Optional[Log] = None) -> MeasureSession:
    """Open ``device_id`` (``local``, ``adb:…``, ``tcp:HOST:PORT`` or a zeroconf name) for measuring."""
    t0 = time.monotonic()
    session = MeasureSession(open_device(device_id, runner=runner, token=token), log=log)
    session.stats.open_s = time.monotonic() - t0
    return session


def measure(device: Device, artifact: "Artifact", config: MeasureConfig = MeasureConfig(), **kwargs) -> BenchResult:
    """One measurement on an already open ``device`` (a session of one: the device stays open)."""
    session = MeasureSession(device)
    try:
        return session.measure(artifact, config, **kwargs)
    finally:
        session._performance.off()


def _push_artifact(session: MeasureSession, artifact: "Artifact", log: Optional[Log]) -> tuple[str, str]:
    """Push the model and vectors unless the device holds them, and verify the model by sha256 where
    the transport can hash. A connection that dropped while the session sat idle (a TCP runner closes
    idle connections; a sweep lowers between measurements) is re-opened once, for transports that can."""
    t, m = session.transport, artifact.manifest
    remote = f"{t.workdir}/{m.cache_key}"
    remote_model, remote_vectors = f"{remote}/{m.artifact_file}", f"{remote}/{m.vectors_file}"
    for attempt in (0, 1):
        try:
            session.stats.artifact_pushes += push_if_changed(t, artifact.model_path, remote_model, m.artifact_sha256)
            session.stats.artifact_pushes += push_if_changed(t, artifact.vectors_path, remote_vectors,
                                                             m.vectors_sha256)
            # transports that can hash on the device verify the push (and that nobody changed it since)
            if SHA256 in t.capabilities and t.sha256(remote_model) != m.artifact_sha256:
                raise TransportError(f"{session.id}: the pushed {m.artifact_file} does not match its sha256; "
                                     "not running it")
            return remote_model, remote_vectors
        except TransportError as exc:
            if attempt or RECONNECT not in t.capabilities:
                raise
            if log:
                log(f"{session.id}: {exc}; reconnecting and pushing again")
            session.reconnect()
    raise AssertionError("unreachable")


def _measure(session: MeasureSession, artifact: "Artifact", config: MeasureConfig, *,
             etdump_local: Optional[Path], save_outputs_local: Optional[Path], extra_args: Sequence[str],
             log: Optional[Log]) -> BenchResult:
    """The artifact is pushed once per device (``{workdir}/{cache_key}/``, shared); each run writes its
    outputs into a fresh ``{workdir}/runs/{nonce}/``, removed after they are pulled."""
    device = session.device
    m = artifact.manifest
    t = device.transport
    session.check(m.format)  # a runner that cannot run this format fails before anything is pushed
    remote_model, remote_vectors = _push_artifact(session, artifact, log)
    runner_argv = session.runner_argv(m.format)
    run_dir = _new_run_dir(t)
    try:
        remote_out, remote_etdump = f"{run_dir}/result.json", f"{run_dir}/run.etdump"
        remote_outputs = f"{run_dir}/outputs.epv"
        argv = [*runner_argv, "--model", remote_model, "--vectors", remote_vectors,
                "--warmup", str(config.warmup), "--iterations", str(config.iterations),
                "--min-seconds", repr(config.min_seconds), "--threads", str(config.threads),
                "--idle-s", repr(config.energy_idle_s),
                "--rtol", repr(m.rtol), "--atol", repr(m.atol), "--method", config.method,
                "--output", remote_out, *extra_args]
        if config.max_iterations:  # only when set: a runner built before the flag still runs the rest
            argv += ["--max-iterations", str(config.max_iterations)]
        if etdump_local is not None:
            argv += ["--etdump", remote_etdump]
        if save_outputs_local is not None:
            argv += ["--save-outputs", remote_outputs]
        with RunHygiene(t, config, log=log, performance=session._performance) as hygiene:
            res, retried = _run_with_retry(device, [*hygiene.prefix, *argv], config, m.artifact_sha256, remote_model,
                                           log)
            state = hygiene.finish()
        if retried:
            state = dataclasses.replace(state, notes=(*state.notes, retried))
        with tempfile.TemporaryDirectory(prefix="edgeprobe-pull-") as tmp:
            local_out = Path(tmp) / "result.json"
            if res.exit_code == 0 and not res.timed_out:
                try:
                    t.pull(remote_out, local_out)
                except Exception:  # noqa: BLE001 - a missing record is reported as bad_record below
                    pass
            record = _record_from(res, local_out, config.timeout_s)
        if etdump_local is not None and record.status == "ok":
            t.pull(remote_etdump, etdump_local)
        if save_outputs_local is not None and record.status == "ok":
            t.pull(remote_outputs, save_outputs_local)
    finally:
        _remove_run_dir(t, run_dir)
    return BenchResult(
        model_ref=m.model_ref,
        device=session.info(),
        manifest=m,
        run=record,
        host_versions=versions.tool_versions(),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        device_state=state,
    )
