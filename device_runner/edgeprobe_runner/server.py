"""`edgeprobe runner serve`: the device side of the TCP transport, advertised over zeroconf.

Wire protocol (written by hand: it is a dozen lines of framing, and no RPC library would keep the
device side this small): every message is a 4-byte big-endian length + a UTF-8 JSON header,
optionally followed by ``size`` raw bytes. The first request must be ``hello`` with the token
(compared in constant time). Then:

- ``push {path, size, sha256}`` + bytes: written to a temporary name, sha256-checked, renamed;
  ``size`` is capped; ``path`` must stay inside the work dir (no absolute paths, no ``..``).
- ``pull {path}`` -> ``{size}`` + bytes.
- ``run {argv, timeout_s}``: only the runners run (``@native`` / ``@python`` as argv[0]); every
  path argument must stay inside the work dir. This server is a runner, not a remote shell.
- ``info`` -> device description.

It must not import the host package.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from edgeprobe_runner import __version__

SERVICE_TYPE = "_edgeprobe._tcp.local."
MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_UPLOAD_BYTES = 2 << 30
PATH_FLAGS = ("--model", "--vectors", "--output", "--etdump", "--save-outputs", "--split-outputs")
CHUNK = 1 << 20


class ProtocolError(Exception):
    pass


class _Refused(ProtocolError):
    """A request refused after its payload was consumed; the connection stays in sync."""


def send_msg(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    data = json.dumps(header).encode()
    sock.sendall(struct.pack(">I", len(data)) + data + payload)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), CHUNK))
        if not chunk:
            raise ProtocolError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_msg(sock: socket.socket) -> dict[str, Any]:
    (n,) = struct.unpack(">I", recv_exact(sock, 4))
    if n > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {n} bytes is over the {MAX_HEADER_BYTES} limit")
    try:
        header = json.loads(recv_exact(sock, n))
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    return header


def device_info(name: str) -> dict[str, str]:
    u = platform.uname()
    runtimes = ["python"]
    native = os.environ.get("EDGEPROBE_NATIVE_RUNNER")
    if native and os.access(native, os.X_OK):
        runtimes.insert(0, "native")
    return {"name": name, "os": u.system, "kernel": u.release, "machine": u.machine, "abi": u.machine,
            "hostname": u.node, "cores": str(os.cpu_count()), "runtimes": ",".join(runtimes), "version": __version__}


class RunnerServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], *, token: str, workdir: Path, name: str,
                 native_runner: Optional[str] = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
        self.token, self.workdir, self.name = token, workdir.resolve(), name
        self.native_runner, self.max_upload_bytes = native_runner, max_upload_bytes
        self.workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(addr, _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def confined(self, rel: str) -> Path:
        """Resolve a client path inside the work dir, or refuse it."""
        if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\0" in rel:
            raise ProtocolError(f"path {rel!r} must be relative to the runner's work dir")
        p = (self.workdir / rel).resolve()
        if p != self.workdir and self.workdir not in p.parents:
            raise ProtocolError(f"path {rel!r} leaves the runner's work dir")
        return p

    def runner_argv(self, argv: Sequence[str]) -> list[str]:
        if not argv or argv[0] not in ("@native", "@python"):
            raise ProtocolError("only the runners can be run: argv[0] must be @native or @python")
        if argv[0] == "@native":
            if not self.native_runner:
                raise ProtocolError("this runner server has no native runner (start it with --native-runner)")
            head = [self.native_runner]
        else:
            head = [sys.executable, "-m", "edgeprobe_runner"]
        rest = [str(a) for a in argv[1:]]
        for i, a in enumerate(rest[:-1]):
            if a in PATH_FLAGS:
                rest[i + 1] = str(self.confined(rest[i + 1]))
        return head + rest


class _Handler(socketserver.BaseRequestHandler):
    server: RunnerServer

    def handle(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(600)
        try:
            hello = recv_msg(sock)
            token = hello.get("token")
            if hello.get("op") != "hello" or not isinstance(token, str) or \
                    not hmac.compare_digest(token.encode(), self.server.token.encode()):
                send_msg(sock, {"ok": False, "error": "unauthorized: wrong or missing token"})
                return
            send_msg(sock, {"ok": True, "info": device_info(self.server.name)})
            while True:
                try:
                    req = recv_msg(sock)
                except ProtocolError:
                    return  # client went away
                try:
                    self.dispatch(sock, req)
                except _Refused as exc:  # payload drained: the connection stays usable
                    send_msg(sock, {"ok": False, "error": str(exc)})
                except ProtocolError as exc:
                    send_msg(sock, {"ok": False, "error": str(exc)})
                    if req.get("op") == "push":
                        return  # the payload may be half-read: drop the connection
        except (OSError, ProtocolError):
            return

    def dispatch(self, sock: socket.socket, req: dict[str, Any]) -> None:
        op = req.get("op")
        srv = self.server
        if op == "info":
            send_msg(sock, {"ok": True, "info": device_info(srv.name)})
        elif op == "push":
            size = req.get("size")
            if not isinstance(size, int) or size < 0:
                raise ProtocolError("push needs a non-negative integer size")
            if size > srv.max_upload_bytes:
                raise ProtocolError(f"upload of {size} bytes is over this runner's {srv.max_upload_bytes}-byte limit")
            try:
                dest = srv.confined(req.get("path", ""))
            except ProtocolError as exc:
                for _ in range(0, size, CHUNK):  # read and discard the payload, then refuse
                    recv_exact(sock, min(CHUNK, size - _))
                raise _Refused(str(exc)) from None
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
            h = hashlib.sha256()
            try:
                with open(tmp, "wb") as f:
                    left = size
                    while left:
                        chunk = sock.recv(min(left, CHUNK))
                        if not chunk:
                            raise ProtocolError(f"connection closed with {left} bytes of {size} unsent")
                        f.write(chunk)
                        h.update(chunk)
                        left -= len(chunk)
                if h.hexdigest() != req.get("sha256"):
                    raise ProtocolError("sha256 of the received file does not match; nothing was kept")
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            send_msg(sock, {"ok": True, "sha256": h.hexdigest()})
        elif op == "pull":
            src = srv.confined(req.get("path", ""))
            if not src.is_file():
                raise ProtocolError(f"no file {req.get('path')!r} on the device")
            data = src.read_bytes()
            send_msg(sock, {"ok": True, "size": len(data)}, data)
        elif op == "run":
            argv = srv.runner_argv(req.get("argv") or [])
            timeout_s = float(req.get("timeout_s", 300))
            t0 = time.monotonic()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    errors="replace", cwd=srv.workdir, start_new_session=True)
            try:
                out, err = proc.communicate(timeout=timeout_s)
                send_msg(sock, {"ok": True, "exit_code": proc.returncode, "stdout": out, "stderr": err,
                                "duration_s": time.monotonic() - t0, "timed_out": False})
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                send_msg(sock, {"ok": True, "exit_code": None, "stdout": out, "stderr": err,
                                "duration_s": time.monotonic() - t0, "timed_out": True})
        else:
            raise ProtocolError(f"unknown op {op!r}")


def advertise(server: RunnerServer, address: str):
    """Register the server over zeroconf on ``address`` only; returns the Zeroconf to close."""
    from zeroconf import ServiceInfo, Zeroconf

    zc = Zeroconf(interfaces=[address])
    info = device_info(server.name)
    props = {k: info[k] for k in ("name", "abi", "runtimes", "version")}
    si = ServiceInfo(SERVICE_TYPE, f"{server.name}.{SERVICE_TYPE}", addresses=[socket.inet_aton(address)],
                     port=server.port, properties=props, server=f"{server.name}.local.")
    zc.register_service(si)
    return zc, si


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="edgeprobe runner serve", description="Serve this device's runners over TCP.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen and advertise on")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--token", default=os.environ.get("EDGEPROBE_TOKEN"), help="default: a random one, printed")
    p.add_argument("--name", default=f"edgeprobe-{socket.gethostname()}")
    p.add_argument("--workdir", default=None)
    p.add_argument("--native-runner", default=os.environ.get("EDGEPROBE_NATIVE_RUNNER"))
    p.add_argument("--max-upload-bytes", type=int, default=DEFAULT_MAX_UPLOAD_BYTES)
    p.add_argument("--no-zeroconf", action="store_true")
    args = p.parse_args(argv)
    token = args.token or secrets.token_urlsafe(16)
    workdir = Path(args.workdir) if args.workdir else Path.home() / ".cache" / "edgeprobe-runner"
    if args.native_runner:
        os.environ["EDGEPROBE_NATIVE_RUNNER"] = args.native_runner
    server = RunnerServer((args.host, args.port), token=token, workdir=workdir, name=args.name,
                          native_runner=args.native_runner, max_upload_bytes=args.max_upload_bytes)
    zc = None
    if not args.no_zeroconf:
        zc, _ = advertise(server, args.host)
    print(json.dumps({"listening": f"{args.host}:{server.port}", "name": args.name, "token": token,
                      "workdir": str(server.workdir), "zeroconf": not args.no_zeroconf}), flush=True)
    try:
        serve_until_stopped(server)
    finally:
        if zc is not None:
            zc.unregister_all_services()
            zc.close()
        if args.workdir is None:
            shutil.rmtree(workdir / "tmp", ignore_errors=True)
    return 0


def serve_until_stopped(server: socketserver.BaseServer) -> None:
    """Serve in a thread until SIGTERM or Ctrl-C, then shut the server down and close it."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
