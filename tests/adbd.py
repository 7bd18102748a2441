"""A test adbd: the device side of the real ADB wire protocol, on loopback, for tests.

No phone can be attached here, so edgeprobe's ADB transport is proven against this server. It
speaks the protocol adb clients speak (24-byte headers, CNXN, AUTH with token/signature and the
public-key path, OPEN/OKAY/WRTE/CLSE with one outstanding WRTE per stream, ``shell:``,
``shell,v2:`` (stdout/stderr/exit packets; advertised as the ``shell_v2`` feature), ``exec:`` and
``sync:`` STAT/LIST/SEND/RECV/DONE/QUIT). What it is not: Android. Shell commands run with /bin/sh
on this machine, with the device path ``/data/local/tmp`` mapped into a sandbox directory
(``root``) by rewriting that prefix in the command line; ``getprop`` answers from the ``props``
given, ``dumpsys SERVICE`` and ``cmd`` from the ``dumpsys`` texts given (absent = "not found";
files under ``bin/dumpsys.d/``, which a test may rewrite while it runs; each call is appended to
``dumpsys.log`` once it has answered),
and ``env`` is added to the shell's environment (e.g. ``EDGEPROBE_SYSFS_ROOT`` for a fake sysfs).
Fault injection: ``drop_after_send_bytes`` closes the connection mid-push; ``drop_on_shell`` closes
it while a shell command containing that text runs (mid-run), ``drop_times`` times.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import Optional

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

A_CNXN, A_AUTH, A_OPEN, A_OKAY, A_CLSE, A_WRTE = (struct.unpack("<I", c)[0] for c in
                                                  (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"CLSE", b"WRTE"))
VERSION = 0x01000000
DEVICE_DIR = "/data/local/tmp"


def pack(cmd: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return struct.pack("<6I", cmd, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF) + data


def parse_adb_pubkey(blob: bytes) -> rsa.RSAPublicKey:
    """Android's RSAPublicKey struct (len, n0inv, n[len], rr[len], e), base64, then ' user@host'."""
    raw = base64.b64decode(blob.split(b"\0")[0].split(b" ")[0])
    (words,) = struct.unpack_from("<I", raw, 0)
    n = int.from_bytes(raw[8: 8 + 4 * words], "little")
    (e,) = struct.unpack_from("<I", raw, 8 + 8 * words)
    return rsa.RSAPublicNumbers(e, n).public_key()


class _Closed(Exception):
    pass


class _StreamClosed(Exception):
    """The client closed one stream (CLSE); the connection goes on."""


class TestAdbd:
    __test__ = False

    def __init__(self, root: Path, *, accept_any_key: bool = True, props: Optional[dict[str, str]] = None,
                 maxdata: int = 1 << 20, drop_after_send_bytes: Optional[int] = None,
                 dumpsys: Optional[dict[str, str]] = None, env: Optional[dict[str, str]] = None,
                 drop_on_shell: Optional[str] = None, drop_times: int = 1, shell_v2: bool = True,
                 emulate_aarch64: bool = False) -> None:
        self.root = Path(root)
        (self.root / DEVICE_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
        self.accept_any_key, self.maxdata = accept_any_key, maxdata
        self.props = props or {"ro.product.manufacturer": "edgeprobe", "ro.product.model": "test-adbd",
                               "ro.product.cpu.abi": os.uname().machine, "ro.build.version.sdk": "34"}
        self.drop_after_send_bytes = drop_after_send_bytes
        self.drop_on_shell, self.drop_times, self.shell_v2 = drop_on_shell, drop_times, shell_v2
        self.env = env or {}
        self.shell_log: list[str] = []
        self.services: list[str] = []
        self.authorized: list[rsa.RSAPublicKey] = []
        self.bin = self.root / ".adbd-bin"
        self.bin.mkdir(exist_ok=True)
        lines = "\n".join(f'  {k}) echo "{v}";;' for k, v in self.props.items())
        (self.bin / "getprop").write_text(f'#!/bin/sh\ncase "$1" in\n{lines}\n  *) echo "";;\nesac\n')
        (self.bin / "getprop").chmod(0o755)
        if emulate_aarch64:
            # This machine plays an arm64 phone: its `env` (the runner is started through it) hands
            # aarch64 ELF files to qemu user-mode emulation, as binfmt_misc would on a real kernel.
            (self.bin / "env").write_text(
                '#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in *=*) export "$1"; shift;; *) break;; esac; done\n'
                'if [ -f "$1" ] && [ "$(od -An -tx1 -j18 -N2 "$1" | tr -d " ")" = "b700" ]; then\n'
                '  exec qemu-aarch64-static -L /usr/aarch64-linux-gnu "$@"\nfi\nexec "$@"\n')
            (self.bin / "env").chmod(0o755)
        if dumpsys is not None:
            ddir = self.bin / "dumpsys.d"
            ddir.mkdir(exist_ok=True)
            for service, text in dumpsys.items():  # a HAL's name has a "/": ...IPowerStats/default
                (ddir / service).parent.mkdir(parents=True, exist_ok=True)
                (ddir / service).write_text(text)
            (self.bin / "dumpsys").write_text(  # every call is logged to dumpsys.d/dumpsys.log once answered
                f'#!/bin/sh\nf="{ddir}/$1"\nlog="{ddir}/dumpsys.log"\n'
                'if [ -f "$f" ]; then cat "$f"; rc=$?; echo "$*" >> "$log"; exit $rc; fi\n'
                'echo "$*" >> "$log"; echo "Can\'t find service: $1" >&2; exit 1\n')
            (self.bin / "dumpsys").chmod(0o755)
            (self.bin / "cmd").write_text(f'#!/bin/sh\necho "$*" >> "{ddir}/cmd.log"\n'
                                          f'[ -f "{ddir}/cmd-ok" ] && exit 0\necho "Unknown command: $2"; exit 255\n')
            (self.bin / "cmd").chmod(0o755)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "TestAdbd":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()

    def device_path(self, path: str) -> Path:
        p = (self.root / path.lstrip("/")).resolve()
        if self.root.resolve() not in p.parents and p != self.root.resolve():
            raise PermissionError(path)
        return p

    # ------------------------------------------------------------------ connection

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _recv(self, conn: socket.socket, n: int) -> bytes:
        # MSG_WAITALL: as a rule a whole packet in one call (no quadratic ``bytes +=`` over a 1 MiB payload).
        buf = conn.recv(n, socket.MSG_WAITALL)
        if len(buf) == n:
            return buf
        parts, got = [buf], len(buf)
        while got < n:
            chunk = conn.recv(n - got)
            if not chunk:
                raise _Closed()
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _read(self, conn: socket.socket) -> tuple[int, int, int, bytes]:
        cmd, a0, a1, n, _crc, magic = struct.unpack("<6I", self._recv(conn, 24))
        if magic != cmd ^ 0xFFFFFFFF:
            raise _Closed()
        return cmd, a0, a1, self._recv(conn, n) if n else b""

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                cmd, _v, _m, _banner = self._read(conn)
                if cmd != A_CNXN:
                    return
                token = os.urandom(20)
                conn.sendall(pack(A_AUTH, 1, 0, token))
                while True:
                    cmd, kind, _a1, data = self._read(conn)
                    if cmd != A_AUTH:
                        return
                    if kind == 2 and any(self._verifies(k, data, token) for k in self.authorized):
                        break
                    if kind == 3 and self.accept_any_key:  # the user tapped "Allow" on the phone
                        self.authorized.append(parse_adb_pubkey(data))
                        break
                    if kind == 2:
                        token = os.urandom(20)
                        conn.sendall(pack(A_AUTH, 1, 0, token))
                banner = "device::" + ";".join(f"{k}={v}" for k, v in self.props.items()) + ";features=" + ("shell_v2," if self.shell_v2 else "") + "cmd\0"
                conn.sendall(pack(A_CNXN, VERSION, self.maxdata, banner.encode()))
                next_id = 1
                while True:
                    cmd, remote, _a1, data = self._read(conn)
                    if cmd == A_OPEN:
                        local, next_id = next_id, next_id + 1
                        self._service(conn, local, remote, data.rstrip(b"\0").decode())
        except (_Closed, OSError):
            return

    @staticmethod
    def _verifies(key: rsa.RSAPublicKey, signature: bytes, token: bytes) -> bool:
        try:
            key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
            return True
        except Exception:  # noqa: BLE001
            return False

    def _write(self, conn: socket.socket, local: int, remote: int, data: bytes) -> None:
        """WRTE in maxdata chunks, each waiting for the client's OKAY (ADB flow control)."""
        for i in range(0, len(data), self.maxdata):
            conn.sendall(pack(A_WRTE, local, remote, data[i: i + self.maxdata]))
            while True:
                cmd, _a0, _a1, _d = self._read(conn)
                if cmd == A_OKAY:
                    break
                if cmd == A_CLSE:
                    conn.sendall(pack(A_CLSE, local, remote))
                    raise _StreamClosed()

    def _close_stream(self, conn: socket.socket, local: int, remote: int) -> None:
        conn.sendall(pack(A_CLSE, local, remote))

    # ------------------------------------------------------------------ services

    def _service(self, conn: socket.socket, local: int, remote: int, service: str) -> None:
        try:
            self._run_service(conn, local, remote, service)
        except _StreamClosed:
            pass

    def _run_service(self, conn: socket.socket, local: int, remote: int, service: str) -> None:
        name, _, command = service.partition(":")
        kind, *opts = name.split(",")  # e.g. "shell,v2,raw" from a real adb client
        if kind in ("shell", "exec") and not service.startswith("sync"):
            conn.sendall(pack(A_OKAY, local, remote))
            v2 = "v2" in opts
            self.shell_log.append(command)
            self.services.append(name)
            command = command.replace(DEVICE_DIR, str(self.root) + DEVICE_DIR)
            env = {**os.environ, **self.env, "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
            if self.drop_on_shell and self.drop_on_shell in command and self.drop_times > 0:
                self.drop_times -= 1
                proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=self.root, env=env)
                threading.Timer(0.3, conn.close).start()  # the cable is pulled while the command runs
                proc.wait(timeout=600)
                raise _Closed()
            proc = subprocess.run(["/bin/sh", "-c", command], cwd=self.root, env=env, capture_output=True, timeout=600)
            if v2:  # packets: id (1 stdout, 2 stderr, 3 exit) + u32 length
                out = b"".join(struct.pack("<BI", i, len(d)) + d for i, d in ((1, proc.stdout), (2, proc.stderr)) if d)
                out += struct.pack("<BI", 3, 1) + bytes([proc.returncode & 0xFF])
            else:
                out = proc.stdout + (proc.stderr if kind == "shell" else b"")
            self._write(conn, local, remote, out)
            self._close_stream(conn, local, remote)
        elif service == "sync:":
            conn.sendall(pack(A_OKAY, local, remote))
            self._sync(conn, local, remote)
        else:
            conn.sendall(pack(A_CLSE, 0, remote))

    def _sync(self, conn: socket.socket, local: int, remote: int) -> None:
        buf = bytearray()
        pos = 0  # bytes of buf already consumed (dropped when more is read, not on every request)
        received = 0

        def need(n: int) -> bytes:
            nonlocal pos
            while len(buf) - pos < n:
                cmd, _a0, _a1, data = self._read(conn)
                if cmd == A_CLSE:
                    conn.sendall(pack(A_CLSE, local, remote))
                    raise _StreamClosed()
                if cmd == A_WRTE:
                    conn.sendall(pack(A_OKAY, local, remote))
                    del buf[:pos]
                    pos = 0
                    buf.extend(data)
            out = bytes(buf[pos:pos + n])
            pos += n
            return out

        while True:
            ident, length = struct.unpack("<4sI", need(8))
            if ident == b"QUIT":
                self._close_stream(conn, local, remote)
                return
            arg = need(length)
            if ident == b"STAT":
                try:
                    st = os.stat(self.device_path(arg.decode()))
                    reply = struct.pack("<4s3I", b"STAT", st.st_mode, st.st_size, int(st.st_mtime))
                except OSError:
                    reply = struct.pack("<4s3I", b"STAT", 0, 0, 0)
                self._write(conn, local, remote, reply)
            elif ident == b"SEND":
                path, _, _mode = arg.decode().rpartition(",")
                dest = self.device_path(path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.adbd-part")  # renamed into place on DONE, as adbd does
                with open(tmp, "wb") as f:
                    while True:
                        cid, n = struct.unpack("<4sI", need(8))
                        if cid == b"DONE":
                            break
                        chunk = need(n)
                        received += len(chunk)
                        if self.drop_after_send_bytes is not None and received >= self.drop_after_send_bytes:
                            conn.close()
                            raise _Closed()
                        f.write(chunk)
                os.replace(tmp, dest)
                dest.chmod(0o755)
                self._write(conn, local, remote, struct.pack("<4sI", b"OKAY", 0))
            elif ident == b"LIST":
                out = bytearray()
                try:
                    entries = sorted(self.device_path(arg.decode()).iterdir())
                except OSError:
                    entries = []
                for e in entries:
                    st, name = e.stat(), e.name.encode()
                    out += struct.pack("<4s4I", b"DENT", st.st_mode, st.st_size, int(st.st_mtime), len(name)) + name
                out += struct.pack("<4s4I", b"DONE", 0, 0, 0, 0)
                self._write(conn, local, remote, bytes(out))
            elif ident == b"RECV":
                try:
                    data = self.device_path(arg.decode()).read_bytes()
                except OSError as exc:
                    msg = str(exc).encode()
                    self._write(conn, local, remote, struct.pack("<4sI", b"FAIL", len(msg)) + msg)
                    continue
                out = bytearray()
                for i in range(0, len(data), 64 * 1024):
                    chunk = data[i: i + 64 * 1024]
                    out += struct.pack("<4sI", b"DATA", len(chunk)) + chunk
                out += struct.pack("<4sI", b"DONE", 0)
                self._write(conn, local, remote, bytes(out))
            else:
                msg = f"unsupported sync request {ident!r}".encode()
                self._write(conn, local, remote, struct.pack("<4sI", b"FAIL", len(msg)) + msg)


__all__ = ["TestAdbd"]


def main(argv: Optional[list[str]] = None) -> None:
    """``python tests/adbd.py ROOT``: one test adbd in a process of its own (e.g. inside a network
    namespace: it binds that namespace's loopback). Prints ``{"port": N}`` and serves until stdin
    closes or SIGTERM."""
    import json
    import signal
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python tests/adbd.py ROOT")
    signal.signal(signal.SIGTERM, lambda *_a: sys.exit(0))
    with TestAdbd(Path(args[0])) as adbd:
        print(json.dumps({"port": adbd.port}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
