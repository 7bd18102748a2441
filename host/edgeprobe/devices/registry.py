"""Device ids to open devices: ``local``, ``adb:SERIAL`` / ``adb:HOST:PORT``, ``tcp:HOST:PORT``
or a zeroconf runner name becomes a ``Device`` (a transport plus the runner flavour used there)."""

from __future__ import annotations

import os
import sys
from typing import Optional

from edgeprobe.devices.base import Transport
from edgeprobe.devices.local import LocalTransport
from edgeprobe.errors import DeviceNotFoundError, UsageError
from edgeprobe.results import DeviceInfo

FLAVORS = ("native", "python", "app")  # app: the edgeprobe Android app's in-process ExecuTorch runner (tcp only)


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
        if self.runner in ("native", "app") and format != "pte":
            raise UsageError(f"the {self.runner} runner runs .pte only; a .{format} needs --runner python")
        if self.runner == "app" and self.transport.kind not in ("tcp", "mock"):
            raise UsageError("runner app is the edgeprobe Android app's in-process runner: start the app with "
                             "`edgeprobe app start --device adb:...` and bench the tcp:ADDRESS:PORT it prints")
        if self.transport.kind == "tcp":
            runtimes = [r for r in self.transport.info().get("runtimes", "").split(",") if r]
            if self.runner not in runtimes:
                hint = ("; runner app is the edgeprobe Android app's (with its ExecuTorch library)"
                        if self.runner == "app" else "")
                raise UsageError(f"runner {self.id} offers {','.join(runtimes) or 'no runtime'}, not the "
                                 f"{self.runner} runner{hint}")
        elif self.transport.kind == "adb":
            if self.runner != "native":
                raise UsageError("over ADB only the native runner is deployed; drop --runner python")
        elif self.runner == "native" and self.transport.kind != "mock":
            from edgeprobe.native import find_native_runner

            find_native_runner()

    def runner_argv(self, format: str) -> list[str]:
        """The command that starts this device's runner for a ``format`` artifact (pushing the
        native runner bundle to an ADB device first)."""
        self.check_runner(format)
        if self.transport.kind in ("tcp", "mock"):
            return [f"@{self.runner}"]  # the server (or the mock's handler) maps these to its own runners
        if self.transport.kind == "adb":
            from edgeprobe.devices.deploy import deploy_native_runner

            return deploy_native_runner(self.transport)
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
