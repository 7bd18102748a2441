"""ADB transport on the pure-Python adb-shell library (no adb binary, no adb server).

Device ids: ``adb:HOST:PORT`` (ADB over TCP, e.g. `adb tcpip` or a test adbd) and
``adb:SERIAL`` (USB, needs adb-shell's ``usb`` extra / libusb1). adb-shell 0.4.4 speaks no shell
protocol v2, so exit codes come from a sentinel echoed after the command, and stderr is sent to
a file on the device and read back. The key pair is in ``adb_keys``, the fast TCP push loop in
``adb_sync``.
"""

from __future__ import annotations

import shlex
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from edgeprobe.devices.adb_keys import key_path, load_signer  # noqa: F401 - re-exported (tests, discovery)
from edgeprobe.devices.adb_sync import _push_tcp
from edgeprobe.devices.base import RECONNECT, SHA256, SHELL, RunResult, TransportBase
from edgeprobe.errors import TransportError

WORKDIR = "/data/local/tmp/edgeprobe"
AUTH_TIMEOUT_S = 30.0  # long enough to tap "Allow USB debugging" on the phone
SENTINEL = "__EDGEPROBE_EXIT__"
MIN_BYTES_PER_S = 1e6  # timeouts scale with file size at no less than this rate


def _translate(exc: BaseException, what: str, target: str) -> TransportError:
    name = type(exc).__name__
    if name == "DeviceAuthError" or "auth" in str(exc).lower():
        return TransportError(f"{target}: not authorized ({exc}); accept the 'Allow USB debugging' prompt on the "
                              "phone, then retry")
    if isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
        return TransportError(f"{target}: not found or offline ({exc}); check the address and `adb tcpip`")
    if name in ("UsbDeviceNotFoundError",):
        return TransportError(f"{target}: no such USB device; is it plugged in with USB debugging on?")
    if "LIBUSB_ERROR_BUSY" in str(exc) or "Resource busy" in str(exc):
        return TransportError(f"{target}: USB interface busy, probably held by an adb server: run `adb kill-server`")
    return TransportError(f"{target}: {what} failed ({name}: {exc}); the device may have disconnected")


class AdbTransport(TransportBase):
    kind = "adb"
    capabilities = frozenset({SHELL, SHA256, RECONNECT})
    workdir = WORKDIR

    def __init__(self, address: str, *, key: Optional[Path] = None, auth_timeout_s: float = AUTH_TIMEOUT_S,
                 transport_timeout_s: float = 10.0, on_auth_prompt: Optional[Callable[[], None]] = None) -> None:
        self.target = f"adb:{address}"
        self._address, self._key, self._auth_timeout_s = address, key, auth_timeout_s
        self._transport_timeout_s, self._on_auth_prompt = transport_timeout_s, on_auth_prompt
        self._dev: Any = None
        self._connect()
        self._info: Optional[dict[str, str]] = None

    def _connect(self) -> None:
        from adb_shell.adb_device import AdbDeviceTcp

        address, auth_timeout_s, on_auth_prompt = self._address, self._auth_timeout_s, self._on_auth_prompt
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            # USB serials need adb-shell[usb]; kept out of the default install (libusb).
            try:
                from adb_shell.adb_device import AdbDeviceUsb

                self._dev = AdbDeviceUsb(serial=address, default_transport_timeout_s=self._transport_timeout_s)
            except Exception:  # noqa: BLE001 - ImportError / InvalidTransportError without libusb1
                raise TransportError(f"{self.target}: ADB over USB needs `pip install adb-shell[usb]` (libusb1); "
                                     "for ADB over TCP use adb:HOST:PORT") from None
        else:
            self._dev = AdbDeviceTcp(host, int(port), default_transport_timeout_s=self._transport_timeout_s)
        signer = load_signer(self._key)
        try:
            self._dev.connect(rsa_keys=[signer], auth_timeout_s=auth_timeout_s,
                              auth_callback=(lambda _d: on_auth_prompt()) if on_auth_prompt else None)
        except Exception as exc:  # noqa: BLE001 - adb-shell, socket and libusb errors
            if type(exc).__name__ in ("TcpTimeoutException", "AdbTimeoutError"):
                # The device took the connection but sent no CNXN: it waits for the user to allow the key.
                raise TransportError(
                    f"{self.target}: not authorized within {auth_timeout_s:g} s; accept the 'Allow USB debugging' "
                    "prompt on the phone, then retry") from None
            raise _translate(exc, "connect", self.target) from None
        self._nodelay()

    def reconnect(self) -> None:
        """A fresh connection after the device dropped the old one (cable, adbd restart)."""
        try:
            self._dev.close()
        except Exception:  # noqa: BLE001
            pass
        self._connect()

    def _nodelay(self) -> None:
        """Without TCP_NODELAY adb-shell's small writes stall on Nagle + delayed ACK (< 1 MB/s).

        Also: adb-shell 0.4.4's TCP read returns b"" when the device closes the connection and its
        read loop spins on that until the read timeout (the whole run's timeout); an empty read is
        turned into ConnectionResetError here so that a pulled cable is reported at once."""
        transport = getattr(getattr(self._dev, "_io_manager", None), "_transport", None)
        conn = getattr(transport, "_connection", None)
        if isinstance(conn, socket.socket):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            bulk_read = transport.bulk_read

            def bulk_read_or_reset(numbytes: int, transport_timeout_s: Optional[float]) -> bytes:
                data = bulk_read(numbytes, transport_timeout_s)
                if not data and numbytes > 0:
                    raise ConnectionResetError("connection closed by the device")
                return data

            transport.bulk_read = bulk_read_or_reset

    def _size_timeout(self, nbytes: int) -> float:
        return 30.0 + nbytes / MIN_BYTES_PER_S

    def shell(self, command: str, timeout_s: float = 30.0) -> str:
        try:
            return self._dev.shell(command, timeout_s=timeout_s, read_timeout_s=timeout_s)
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, f"shell {command!r}", self.target) from None

    def push(self, local: Path, remote: str, progress: Optional[Callable[[int, int], None]] = None) -> None:
        """Push to a temporary name, then rename: a broken push never leaves a runnable file."""
        size = Path(local).stat().st_size
        parent = remote.rsplit("/", 1)[0]
        tmp = f"{remote}.part-{uuid.uuid4().hex[:8]}"
        self.shell(f"mkdir -p {shlex.quote(parent)}")
        conn = getattr(getattr(getattr(self._dev, "_io_manager", None), "_transport", None), "_connection", None)
        try:
            if isinstance(conn, socket.socket):  # ADB over TCP: edgeprobe's push loop (see _push_tcp)
                _push_tcp(self._dev, conn, Path(local), tmp, self.target, self._size_timeout(size), progress)
            else:  # USB: adb-shell's own push (its callback gets each chunk's size; progress gets the sum)
                sent = [0]

                def cb(_path: str, chunk: int, total: int) -> None:
                    sent[0] += chunk
                    progress(sent[0], total)  # type: ignore[misc]

                self._dev.push(str(local), tmp, progress_callback=cb if progress else None,
                               read_timeout_s=self._size_timeout(size))
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, f"push of {local} ({size} bytes)", self.target) from None
        self.shell(f"mv -f {shlex.quote(tmp)} {shlex.quote(remote)}")

    def pull(self, remote: str, local: Path) -> None:
        try:
            self._dev.pull(remote, str(local), read_timeout_s=self._size_timeout(0))
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, f"pull of {remote}", self.target) from None

    def sha256(self, remote: str) -> Optional[str]:
        out = self.shell(f"sha256sum {shlex.quote(remote)} 2>/dev/null || true").strip()
        return out.split()[0] if out else None

    def run(self, argv: Sequence[str], timeout_s: float, env: Optional[dict[str, str]] = None) -> RunResult:
        """Run with a device-side kill timer; exit code via a sentinel line, stderr via a file."""
        err = f"{WORKDIR}/.stderr-{uuid.uuid4().hex[:8]}"
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        cmd = (f"mkdir -p {WORKDIR}; cd {WORKDIR}; {prefix} timeout -s KILL {int(timeout_s) + 1} "
               f"{shlex.join(argv)} 2>{err}; rc=$?; echo; echo {SENTINEL}$rc")
        t0 = time.monotonic()
        out = self.shell(cmd, timeout_s=timeout_s + 30)
        duration = time.monotonic() - t0
        stderr = self.shell(f"cat {err} 2>/dev/null; rm -f {err}")
        body, _, code = out.rpartition(SENTINEL)
        try:
            exit_code: Optional[int] = int(code.strip())
        except ValueError:
            exit_code = None
        body = body[:-1] if body.endswith("\n") else body
        if exit_code is not None and exit_code >= 128:  # killed by a signal (137 = the timeout's KILL)
            timed_out = exit_code == 137 and duration >= timeout_s
            return RunResult(None if timed_out else -(exit_code - 128), body, stderr, duration, timed_out)
        return RunResult(exit_code, body, stderr, duration)

    def info(self) -> dict[str, str]:
        if self._info is None:
            props = {}
            for key, prop in (("manufacturer", "ro.product.manufacturer"), ("model", "ro.product.model"),
                              ("soc", "ro.soc.model"), ("abi", "ro.product.cpu.abi"), ("sdk", "ro.build.version.sdk")):
                props[key] = self.shell(f"getprop {prop} 2>/dev/null || true").strip()
            uname = self.shell("uname -srm").split()
            props.update({"os": uname[0] if uname else "", "kernel": uname[1] if len(uname) > 1 else "",
                          "machine": uname[2] if len(uname) > 2 else ""})
            props["abi"] = props["abi"] or props["machine"]
            props["cores"] = self.shell("nproc 2>/dev/null || true").strip()
            props["hostname"] = props["model"] or self.target
            self._info = props
        return dict(self._info)

    def close(self) -> None:
        try:
            self._dev.close()
        except Exception:  # noqa: BLE001
            pass
