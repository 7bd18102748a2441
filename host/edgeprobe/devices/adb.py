"""ADB transport on the pure-Python adb-shell library (no adb binary, no adb server).

Device ids: ``adb:HOST:PORT`` (ADB over TCP, e.g. `adb tcpip` or a test adbd) and
``adb:SERIAL`` (USB, needs adb-shell's ``usb`` extra / libusb1). adb-shell 0.4.4 speaks no shell
protocol v2, so exit codes come from a sentinel echoed after the command, and stderr is sent to
a file on the device and read back.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import struct
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from edgeprobe.devices.base import RECONNECT, SHA256, SHELL, RunResult, TransportBase
from edgeprobe.errors import TransportError

WORKDIR = "/data/local/tmp/edgeprobe"
AUTH_TIMEOUT_S = 30.0  # long enough to tap "Allow USB debugging" on the phone
SENTINEL = "__EDGEPROBE_EXIT__"
MIN_BYTES_PER_S = 1e6  # timeouts scale with file size at no less than this rate


def key_path() -> Path:
    env = os.environ.get("EDGEPROBE_ADB_KEY")
    if env:
        return Path(env)
    android = Path.home() / ".android" / "adbkey"
    if android.is_file():
        return android
    import platformdirs

    return Path(platformdirs.user_config_dir("edgeprobe")) / "adbkey"


def load_signer(path: Optional[Path] = None):
    """The RSA key adb authenticates with; the pair is created (private key mode 0600) on first use.

    Both files are written atomically, the public key first and the private key last, so a kill
    leaves no pair or a whole one. A half pair left by an older edgeprobe (killed between its two
    writes) is repaired: a missing or damaged public key is derived again from the private key; a
    private key that does not parse, with no public key beside it, was never usable and is moved
    aside (``adbkey.unusable-<time>``, never deleted) and a new pair made."""
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    path = Path(path) if path else key_path()
    pub = Path(f"{path}.pub")
    if path.is_file() and _public_key_text(path) is None and not pub.is_file():
        aside = path.with_name(f"{path.name}.unusable-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
    if not path.is_file():
        _generate_pair(path)
    expected = _public_key_text(path)
    if expected is None:
        raise TransportError(f"{path} is not a readable RSA private key (PEM) but has a public key beside it; "
                             f"move both away to have edgeprobe make a new pair, or point EDGEPROBE_ADB_KEY at another key")
    try:
        current = pub.read_text() if pub.is_file() else None
    except (OSError, UnicodeDecodeError):
        current = None
    if current is None or current.split(" ", 1)[0].strip() != expected.split(" ", 1)[0]:
        _atomic_key_write(pub, expected.encode(), 0o644, "adbkey-public")  # derived again: a half pair repaired
        current = expected
    return PythonRSASigner(current, path.read_text())


def _public_key_text(private: Path) -> Optional[str]:
    """adb's public key line (base64 of the Android RSA struct, then `` user@host``) for a private
    key file; None when that file is not a readable PEM private key."""
    import base64

    from adb_shell.auth.keygen import encode_pubkey, get_user_info

    try:
        return base64.b64encode(encode_pubkey(str(private))).decode() + get_user_info()
    except Exception:  # noqa: BLE001 - truncated, empty or not a key
        return None


def _atomic_key_write(path: Path, data: bytes, perm: int, fault: str) -> None:
    from edgeprobe.fsutil import atomic_write_bytes

    atomic_write_bytes(path, data, fault=fault, perm=perm)


def _generate_pair(path: Path) -> None:
    """A new 2048-bit pair: public key file first, private key last (the private key marks a whole pair)."""
    import tempfile

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from edgeprobe.fsutil import _fault_point, fsync_dir

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}*.tmp-*"):  # of a generation killed over a minute ago
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 60:
                stale.unlink()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)  # mode 0600 from the start
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        public = _public_key_text(Path(tmp))
        assert public is not None
        _atomic_key_write(Path(f"{path}.pub"), public.encode(), 0o644, "adbkey-public")
        _fault_point("adbkey-private:temp-written")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


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


# --------------------------------------------------------------------------- push over TCP
#
# Why edgeprobe has its own push loop (on adb-shell's connection, stream ids and packet reader):
# profiling adb-shell 0.4.4's AdbDevice.push (50 MB to the test adbd, cProfile) put ~70 % of the
# time in the ADB packet checksum, ``sum(data)`` over every payload byte in Python (~10 ms per MiB,
# a ceiling of ~100 MB/s on its own), the rest in copying 64 KiB chunks into a send buffer, slicing
# it and sending header and payload in separate calls. Its TCP ``bulk_write`` also sends once on a
# non-blocking socket and ignores how much was taken, so a payload larger than the free socket buffer
# could be cut short. The loop below keeps the protocol as adb-shell negotiates it (version
# 0x01000000: checksums required, one outstanding WRTE per stream, i.e. wait for the device's OKAY
# before the next WRTE; no pipelining, that needs the ``delayed_ack`` feature which neither side
# offers) and changes only how the bytes get there:
#   * the checksum is summed by numpy (~0.3 ms per MiB);
#   * each WRTE carries a full maxdata payload: the sync stream (SEND, DATA chunks of at most 64 KiB
#     as adbd requires, DONE) is cut at maxdata boundaries, a DATA chunk may span two WRTEs (the sync
#     service reads a byte stream; the real adb server cuts it the same way);
#   * file bytes are read straight into the payload buffer (readinto), header + payload go out in one
#     ``sendmsg`` that loops until everything is sent;
#   * while the device works on one payload and its OKAY is awaited, the next one is read and summed
#     (two buffers), which the protocol allows since nothing is sent before the OKAY.
# Reading packets (OKAY/CLSE/WRTE) still goes through adb-shell's I/O manager, so its stream
# bookkeeping, its locks and the empty-read-is-a-reset wrapper of ``_nodelay`` apply. ADB over USB
# (no phone can be attached here to prove a change) keeps adb-shell's own push.

SYNC_DATA_MAX = 64 * 1024  # the most file bytes in one sync DATA chunk that adbd accepts


def _byte_sum(data: memoryview) -> int:
    """The ADB packet checksum (sum of the payload bytes mod 2**32), in numpy."""
    import numpy as np

    return int(np.add.reduce(np.frombuffer(data, np.uint8), dtype=np.uint64)) & 0xFFFFFFFF


def _sendall(conn: socket.socket, buffers: Sequence[Any], timeout_s: Optional[float], target: str) -> None:
    """``sendmsg`` until every byte is out; works on adb-shell's non-blocking socket."""
    import select

    from adb_shell.exceptions import TcpTimeoutException

    views = [memoryview(b).cast("B") for b in buffers]
    views = [v for v in views if len(v)]
    while views:
        try:
            sent = conn.sendmsg(views)
        except (BlockingIOError, InterruptedError):
            sent = 0
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0
        if views:
            _, writable, _ = select.select([], [conn], [], timeout_s)
            if not writable:
                raise TcpTimeoutException(f"sending to {target} timed out after {timeout_s} s")


class _SyncStream:
    """The sync SEND request for one file, cut into WRTE payloads of ``payload_max`` bytes."""

    def __init__(self, f: Any, size: int, device_path: str, st_mode: int, mtime: int) -> None:
        header = f"{device_path},{st_mode}".encode()
        self._f, self._file_left, self._mtime = f, size, mtime
        self._pending = struct.pack("<4sI", b"SEND", len(header)) + header  # protocol bytes not yet placed
        self._chunk_left = 0  # file bytes of the current DATA chunk not yet placed
        self._done_queued = False

    def fill(self, buf: bytearray) -> tuple[int, int]:
        """Fill ``buf`` with the next payload; returns (payload bytes, file bytes in it); (0, 0) at the end."""
        mv, n, file_bytes, cap = memoryview(buf), 0, 0, len(buf)
        while n < cap:
            if self._pending:
                k = min(len(self._pending), cap - n)
                mv[n:n + k] = self._pending[:k]
                self._pending, n = self._pending[k:], n + k
            elif self._chunk_left:
                k = self._f.readinto(mv[n:n + min(self._chunk_left, cap - n)])
                if not k:
                    raise OSError("the local file shrank while it was being pushed")
                self._chunk_left -= k
                n, file_bytes = n + k, file_bytes + k
            elif self._file_left:
                self._chunk_left = min(SYNC_DATA_MAX, self._file_left)
                self._file_left -= self._chunk_left
                self._pending = struct.pack("<4sI", b"DATA", self._chunk_left)
            elif not self._done_queued:
                self._done_queued = True
                self._pending = struct.pack("<4sI", b"DONE", self._mtime)  # DONE's size field is the mtime
            else:
                break
        return n, file_bytes


def _push_tcp(dev: Any, conn: socket.socket, local: Path, device_path: str, target: str, read_timeout_s: float,
              progress: Optional[Callable[[int, int], None]] = None) -> None:
    """adb-shell's ``AdbDevice.push`` (one file, sync SEND), faster; see the comment above."""
    from adb_shell import constants, exceptions
    from adb_shell.adb_message import AdbMessage
    from adb_shell.hidden_helpers import _FileSyncTransactionInfo

    io = dev._io_manager
    wrte = constants.ID_TO_WIRE[constants.WRTE]
    payload_max = min(int(dev._maxdata) or constants.MAX_LEGACY_ADB_DATA, constants.MAX_ADB_DATA)  # the device's limit
    with open(local, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        stream = _SyncStream(f, size, device_path, constants.DEFAULT_PUSH_MODE, int(time.time()))
        adb_info = dev._open(b"sync:", None, read_timeout_s, None)

        def failed(reason: str) -> Exception:
            try:  # close our end of the stream so that the connection stays usable
                io.send(AdbMessage(constants.CLSE, adb_info.local_id, adb_info.remote_id), adb_info)
            except Exception:  # noqa: BLE001
                pass
            return exceptions.PushFailedError(reason)

        bufs = (bytearray(payload_max), bytearray(payload_max))
        n, file_bytes = stream.fill(bufs[0])
        crc, which, done = _byte_sum(memoryview(bufs[0])[:n]), 0, 0
        while n:
            header = struct.pack("<6I", wrte, adb_info.local_id, adb_info.remote_id, n, crc, wrte ^ 0xFFFFFFFF)
            with io._transport_lock:
                _sendall(conn, (header, memoryview(bufs[which])[:n]), adb_info.transport_timeout_s, target)
            next_n, next_file_bytes = stream.fill(bufs[1 - which])  # overlaps with the device's work
            next_crc = _byte_sum(memoryview(bufs[1 - which])[:next_n]) if next_n else 0
            cmd, _, _, data = io.read([constants.OKAY, constants.CLSE, constants.WRTE], adb_info, allow_zeros=True)
            if cmd == constants.CLSE:
                raise failed(f"the device closed the sync stream after {done} of {size} bytes")
            if cmd == constants.WRTE:  # the device answers before DONE only to fail (sync FAIL + reason)
                dev._okay(adb_info)
                reason = bytes(data[8:]).decode("utf-8", "replace") if data[:4] == b"FAIL" else repr(bytes(data[:64]))
                raise failed(reason)
            done += file_bytes
            if progress and file_bytes:
                progress(done, size)
            n, file_bytes, crc, which = next_n, next_file_bytes, next_crc, 1 - which
        filesync_info = _FileSyncTransactionInfo(constants.FILESYNC_PUSH_FORMAT, maxdata=dev._maxdata)
        for cmd_id, _, data in dev._filesync_read_until([], [constants.OKAY, constants.FAIL], adb_info, filesync_info):
            if cmd_id != constants.OKAY:
                raise failed(bytes(data).decode("utf-8", "replace"))
            break
    dev._clse(adb_info)


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
