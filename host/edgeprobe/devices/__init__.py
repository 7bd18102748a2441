"""Devices: a ``Transport`` plus a runner flavor, and the one measurement flow over them.

push artifact -> run the runner in a fresh process with a timeout -> pull the record. A runner
that crashes or hangs becomes an error record with its stderr tail, never a hang or a number.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shlex
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from edgeprobe import versions
from edgeprobe.devices.base import RunResult, Transport
from edgeprobe.devices.local import LocalTransport
from edgeprobe.errors import DeviceNotFoundError, ResultError, TransportError, UsageError
from edgeprobe.lower import Artifact
from edgeprobe.results import BenchResult, DeviceInfo, ErrorInfo, RunRecord

FLAVORS = ("native", "python")


@dataclass(frozen=True)
class MeasureConfig:
    warmup: int = 3
    iterations: int = 20
    min_seconds: float = 0.0
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


class Device:
    """A place to measure: how to reach it (transport) and which runner to use there."""

    def __init__(self, device_id: str, transport: Transport, runner: str) -> None:
        if runner not in FLAVORS:
            raise UsageError(f"unknown runner {runner!r}; choose one of: {', '.join(FLAVORS)}")
        self.id, self.transport, self.runner = device_id, transport, runner

    def info(self) -> DeviceInfo:
        i = self.transport.info()
        desc = f"{i.get('os', '?')} {i.get('machine', '?')} {i.get('hostname', '')}".strip()
        return DeviceInfo(id=self.id, transport=self.transport.kind, runner_flavor=self.runner, description=desc)

    def check_runner(self, format: str) -> None:
        """Fail now, before anything is lowered or pushed, if this device cannot run a ``format``
        artifact with its runner (deploying to a phone happens later, in ``runner_argv``)."""
        if self.runner == "native" and format != "pte":
            raise UsageError(f"the native runner runs .pte only; a .{format} needs --runner python")
        if self.transport.kind == "tcp":
            runtimes = self.transport.info().get("runtimes", "").split(",")
            if self.runner not in runtimes:
                raise UsageError(f"runner {self.id} offers {','.join(runtimes)}, not the {self.runner} runner")
        elif self.transport.kind == "adb":
            if self.runner != "native":
                raise UsageError("over ADB only the native runner is deployed; drop --runner python")
        elif self.runner == "native":
            from edgeprobe.native import find_native_runner

            find_native_runner()

    def runner_argv(self, artifact: Artifact) -> list[str]:
        self.check_runner(artifact.manifest.format)
        if self.transport.kind == "tcp":
            return [f"@{self.runner}"]  # the server maps these to its own runners
        if self.transport.kind == "adb":
            return deploy_native_runner(self.transport)  # type: ignore[arg-type]
        if self.runner == "python":
            return [sys.executable, "-m", "edgeprobe_runner"]
        from edgeprobe.native import find_native_runner

        return [str(find_native_runner())]

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ABI_TO_MACHINE = {"arm64-v8a": "aarch64", "aarch64": "aarch64", "x86_64": "x86_64"}


def deploy_native_runner(transport) -> list[str]:
    """Push the native runner bundle for the device's ABI (skipping files already there by
    sha256) and return the command that starts it."""
    from edgeprobe.errors import RunnerNotBuiltError
    from edgeprobe.native import BINARY, install_dir, verify_bundle

    abi = transport.info().get("abi", "")
    machine = ABI_TO_MACHINE.get(abi)
    if machine is None:
        raise RunnerNotBuiltError(f"no native runner for device ABI {abi!r}; edgeprobe builds x86_64 and aarch64")
    bundle = install_dir(machine)
    binary = bundle / "bin" / BINARY
    if not binary.is_file():
        raise RunnerNotBuiltError(f"no native runner bundle for {machine} at {bundle}; build it with "
                                  f"`edgeprobe runner build`{'' if machine == os.uname().machine else ' (cross build)'}")
    files = verify_bundle(bundle)  # every file against the bundle's manifest: never push a half-written one
    remote = f"{transport.workdir}/runner/{machine}"
    for rel, sha256 in files.items():
        push_if_changed(transport, bundle / rel, f"{remote}/{rel}", sha256)
    transport.shell(f"chmod 755 {remote}/bin/{BINARY}")
    return ["env", f"LD_LIBRARY_PATH={remote}/lib", f"{remote}/bin/{BINARY}"]


def push_if_changed(transport, local: Path, remote: str, sha256: str) -> None:
    """Push unless the device already holds a file with this sha256 (transports that can hash)."""
    device_sha256 = getattr(transport, "sha256", None)
    if device_sha256 is None or device_sha256(remote) != sha256:
        transport.push(local, remote)


def default_runner(format: str) -> str:
    return "native" if format == "pte" else "python"


def _zeroconf_interfaces() -> Optional[list[str]]:
    env = os.environ.get("EDGEPROBE_ZEROCONF_INTERFACES")
    return env.split(",") if env else None


def open_device(device_id: str = "local", *, runner: str = "native", token: Optional[str] = None) -> Device:
    """``local``, ``tcp:HOST:PORT``, or the name of a runner advertised over zeroconf."""
    token = token or os.environ.get("EDGEPROBE_TOKEN")
    if device_id == "local":
        return Device("local", LocalTransport(), runner)
    if device_id.startswith("tcp:"):
        host, _, port = device_id[4:].rpartition(":")
        if not host or not port.isdigit():
            raise DeviceNotFoundError(f"device id {device_id!r} must look like tcp:HOST:PORT")
        from edgeprobe.devices.tcp import TcpTransport

        return Device(device_id, TcpTransport(host, int(port), token), runner)
    if device_id.startswith("adb:"):
        from edgeprobe.devices.adb import AdbTransport

        return Device(device_id, AdbTransport(device_id[4:]), runner)
    if ":" not in device_id:
        from edgeprobe.devices.tcp import discover, open_by_name

        try:  # only an advertiser that proves it holds the token is used
            where, transport = open_by_name(device_id, token, discover(interfaces=_zeroconf_interfaces()))
            return Device(where, transport, runner)
        except LookupError:
            pass
    raise DeviceNotFoundError(
        f"unknown device {device_id!r}; use local, tcp:HOST:PORT or a runner name from `edgeprobe devices`"
    )


def check_device(device_id: str = "local", *, runner: str = "native", token: Optional[str] = None,
                 format: str = "pte") -> None:
    """Open ``device_id`` (so a bad id, a closed port, a wrong token or an unplugged phone fail
    here), check that its runner can run a ``format`` artifact, and close it again: called before
    any lowering, which can take minutes, and the connection is not held idle through it."""
    with open_device(device_id, runner=runner, token=token) as dev:
        dev.check_runner(format)


def adb_addresses() -> list[str]:
    """ADB-over-TCP addresses to list: ``$EDGEPROBE_ADB_ADDRESSES`` (comma-separated HOST:PORT)."""
    return [a.strip() for a in os.environ.get("EDGEPROBE_ADB_ADDRESSES", "").split(",") if a.strip()]


def usb_adb_serials() -> tuple[list[str], Optional[str]]:
    """Serials of USB devices exposing an ADB interface (class 0xff, subclass 0x42, protocol 1),
    via libusb1 (``pip install adb-shell[usb]``); ([], why) when the scan cannot run."""
    try:
        import usb1  # type: ignore[import-not-found]
    except ImportError:
        return [], "USB scan skipped: needs `pip install adb-shell[usb]` (libusb1)"
    serials: list[str] = []
    try:
        with usb1.USBContext() as ctx:
            for dev in ctx.getDeviceIterator(skip_on_error=True):
                adb_iface = any((s.getClass(), s.getSubClass(), s.getProtocol()) == (0xFF, 0x42, 0x01)
                                for cfg in dev for iface in cfg for s in iface)
                if adb_iface:
                    try:
                        serials.append(dev.getSerialNumber() or f"{dev.getBusNumber()}-{dev.getDeviceAddress()}")
                    except usb1.USBError as exc:  # no permission to read the descriptor (udev rules)
                        serials.append(f"{dev.getBusNumber()}-{dev.getDeviceAddress()} (serial unreadable: {exc})")
    except Exception as exc:  # noqa: BLE001 - libusb missing or no USB subsystem
        return serials, f"USB scan failed: {exc}"
    return serials, None


def _adb_row(address: str, connect_timeout_s: float) -> DeviceInfo:
    from edgeprobe.devices.adb import AdbTransport
    from edgeprobe.devices.hygiene import snapshot
    from edgeprobe.devices.probe import thermal_name

    dev_id = f"adb:{address}"
    try:
        t = AdbTransport(address, auth_timeout_s=connect_timeout_s, transport_timeout_s=connect_timeout_s)
    except TransportError as exc:
        return DeviceInfo(dev_id, "adb", "", "", f"unreachable: {exc}")
    try:
        info = t.info()
        snap = snapshot(t)
        parts = []
        if snap is not None and snap.battery is not None and snap.battery.level_percent is not None:
            b = snap.battery
            parts.append(f"battery {b.level_percent} %" + (" charging" if b.charging else ""))
        if snap is not None and snap.thermal_status is not None:
            parts.append(f"thermal {thermal_name(snap.thermal_status)}")
        desc = " · ".join(x for x in (f"{info.get('manufacturer', '')} {info.get('model', '')}".strip(),
                                      info.get("abi", ""), f"SDK {info['sdk']}" if info.get("sdk") else "") if x)
        return DeviceInfo(dev_id, "adb", "native (pushed on first use)", desc,
                          "ok" + (f" ({', '.join(parts)})" if parts else ""))
    except TransportError as exc:
        return DeviceInfo(dev_id, "adb", "", "", f"connected, then failed: {exc}")
    finally:
        t.close()


def _tcp_health(host: str, port: int, token: Optional[str], timeout_s: float) -> str:
    from edgeprobe.devices.tcp import TcpTransport, probe

    if not token:
        return probe(host, int(port), timeout_s)
    try:  # the v2 handshake: the token itself is never sent, and the runner must prove it holds it
        TcpTransport(host, int(port), token, timeout_s=timeout_s).close()
    except TransportError as exc:
        return f"refused: {exc}"
    return "ok (token accepted; the runner proved it holds it)"


def list_devices(adb: Optional[Sequence[str]] = None, *, usb: bool = True, timeout_s: float = 3.0,
                 token: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> list[DeviceInfo]:
    """Every device edgeprobe can reach now, with the runner it would use and its health: local,
    ADB over TCP (``adb`` plus ``$EDGEPROBE_ADB_ADDRESSES``), ADB over USB (libusb scan) and
    runners advertised over zeroconf."""
    from edgeprobe.errors import RunnerNotBuiltError
    from edgeprobe.native import find_native_runner

    try:
        find_native_runner()
        flavor, health = "native", "ok"
    except RunnerNotBuiltError as exc:
        flavor, health = "python", f"ok; native runner not built: {exc}"
    with open_device("local", runner="python") as dev:
        info = dev.info()
    out = [DeviceInfo(info.id, info.transport, flavor, info.description, health)]
    for address in dict.fromkeys([*(adb or ()), *adb_addresses()]):
        if log:
            log(f"connecting to adb:{address}")
        out.append(_adb_row(address, timeout_s))
    if usb:
        serials, why = usb_adb_serials()
        if why and log:
            log(why)
        for serial in serials:
            out.append(_adb_row(serial, timeout_s) if "(" not in serial else
                       DeviceInfo(f"adb:{serial.split()[0]}", "adb", "", "", serial))
    from edgeprobe.devices.tcp import discover

    token = token or os.environ.get("EDGEPROBE_TOKEN")
    for f in discover(interfaces=_zeroconf_interfaces()):
        out.append(DeviceInfo(f["name"], "tcp", f["runtimes"],
                              f"tcp:{f['host']}:{f['port']} · {f['abi']} · edgeprobe_runner {f['version']} (zeroconf)",
                              _tcp_health(f["host"], int(f["port"]), token, timeout_s)))
    return out


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
            reconnect = getattr(t, "reconnect", None)
            if reconnect is None or attempt == config.retries:
                break
            if log:
                log(f"connection lost during the run ({exc}); reconnecting (retry {attempt + 1}/{config.retries})")
            try:
                reconnect()
            except TransportError as again:
                failures.append(str(again))
                break
            device_sha256 = getattr(t, "sha256", None)
            if device_sha256 is not None and device_sha256(remote_model) != sha256:
                raise TransportError(f"{device.id}: after reconnecting, the artifact on the device no longer "
                                     "matches its sha256; not running it")
    raise TransportError(f"{device.id}: the run failed {len(failures)} time(s) with the connection lost: "
                         f"{failures[-1]}")


def _new_run_dir(t) -> str:
    """A directory of its own for one run's outputs (record, ETDump, saved outputs): the artifact
    directory is shared by every bench of that artifact and, on a TCP runner, by all its clients, so
    fixed output names there let concurrent runs exchange records and a runner that writes nothing
    return the previous run's. Made empty; the transports' ``push`` creates parent directories, and
    a TCP runner offers no other way to make one."""
    path = f"{t.workdir}/runs/{uuid.uuid4().hex}"
    if t.kind == "local":
        Path(path).mkdir(parents=True)
    elif getattr(t, "shell", None) is not None:
        q = shlex.quote(path)
        t.shell(f"rm -rf {q}; mkdir -p {q}")
    else:
        with tempfile.TemporaryDirectory(prefix="edgeprobe-run-") as tmp:
            marker = Path(tmp) / ".run"
            marker.write_bytes(b"")
            t.push(marker, f"{path}/.run")
    return path


RUN_FILES = (".run", "result.json", "result.json.tmp", "run.etdump", "outputs.epv")


def _remove_run_dir(t, path: str) -> None:
    """Best effort, after the outputs are pulled. A transport without a shell removes the files it
    can name (``remove``, one file each, where it has one); the empty directory stays."""
    try:
        if t.kind == "local":
            shutil.rmtree(path, ignore_errors=True)
        elif getattr(t, "shell", None) is not None:
            t.shell(f"rm -rf {shlex.quote(path)}")
        elif getattr(t, "remove", None) is not None:
            for name in RUN_FILES:
                try:
                    t.remove(f"{path}/{name}")
                except Exception:  # noqa: BLE001 - most runs write only some of them
                    pass
    except Exception:  # noqa: BLE001 - the record is already pulled; a leftover dir is harmless
        pass


def measure(
    device: Device,
    artifact: Artifact,
    config: MeasureConfig = MeasureConfig(),
    *,
    etdump_local: Optional[Path] = None,
    save_outputs_local: Optional[Path] = None,
    extra_args: Sequence[str] = (),
    log: Optional[Callable[[str], None]] = None,
) -> BenchResult:
    """Measure ``artifact`` on ``device`` in one fresh runner process; returns the full record.

    The artifact is pushed once per device (``{workdir}/{cache_key}/``, shared); each run writes its
    outputs into a fresh ``{workdir}/runs/{nonce}/``, removed after they are pulled."""
    m = artifact.manifest
    runner_argv = device.runner_argv(artifact)
    t = device.transport
    remote = f"{t.workdir}/{m.cache_key}"
    remote_model, remote_vectors = f"{remote}/{m.artifact_file}", f"{remote}/{m.vectors_file}"
    push_if_changed(t, artifact.model_path, remote_model, m.artifact_sha256)
    push_if_changed(t, artifact.vectors_path, remote_vectors, m.vectors_sha256)
    device_sha256 = getattr(t, "sha256", None)  # transports that can hash on the device verify the push
    if device_sha256 is not None and device_sha256(remote_model) != m.artifact_sha256:
        raise TransportError(f"{device.id}: the pushed {m.artifact_file} does not match its sha256; not running it")
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
        if etdump_local is not None:
            argv += ["--etdump", remote_etdump]
        if save_outputs_local is not None:
            argv += ["--save-outputs", remote_outputs]
        from edgeprobe.devices.hygiene import Session

        with Session(t, config, log=log) as session:
            res, retried = _run_with_retry(device, [*session.prefix, *argv], config, m.artifact_sha256, remote_model,
                                           log)
            state = session.finish()
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
        device=device.info(),
        manifest=m,
        run=record,
        host_versions=versions.tool_versions(),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        device_state=state,
    )
