"""`edgeprobe runner serve`: the device side of the TCP transport, advertised over zeroconf.

Wire protocol (device_runner/PROTOCOL.md, "TCP runner server"): the framing and the v2 handshake of
``edgeprobe_runner.wire`` (service ``"runner"``; the token never crosses the wire). Then:

- ``push {path, size, sha256}`` + bytes: streamed to a temporary file next to ``path``,
  sha256-checked, renamed. ``path`` names a file strictly inside the work dir.
- ``pull {path}`` -> ``{size}`` + bytes, streamed from the file.
- ``remove {path}`` -> ``{removed}``: deletes one file (the host removes a split token file so).
- ``run {runner, args, timeout_s}``: a *structured* request. ``runner`` is ``native`` or ``python``;
  every key of ``args`` is checked against ``RUN_ARGS`` (a confined path, an int or a float within
  bounds, an enum, a name, a flag) and the server builds the runner's argv itself; unknown keys are
  refused. This server is a runner, not a remote shell: no client string reaches an argv unchecked.
- ``info`` -> device description.

Limits (each refusal is one line; the server goes on serving the other connections): a connection
cap and a cap per address on connections that have not authenticated, an authentication deadline,
an idle timeout between requests, a per-upload size limit, a global budget of upload bytes in
flight, and a disk quota on the work dir.

It must not import the host package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Sequence

from edgeprobe_runner import __version__
from edgeprobe_runner.wire import (  # noqa: F401  (recv_exact, recv_msg, send_msg: re-exported for old callers)
    DEFAULT_IDLE_TIMEOUT_S, BoundedServer, Budget, ProtocolError, add_server_args, close_after_refusal, discard,
    recv_exact, recv_msg, recv_to_file, send_file, send_msg, serve_until_stopped, server_token)

SERVICE = "runner"
SERVICE_TYPE = "_edgeprobe._tcp.local."
MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_UPLOAD_BYTES = 2 << 30
DEFAULT_MAX_INFLIGHT_BYTES = 4 << 30
DEFAULT_MAX_DISK_BYTES = 8 << 30
DRAIN_LIMIT_BYTES = 1 << 20  # a refused push up to this size is read and dropped: the connection stays usable
OUTPUT_TAIL_BYTES = 64 << 10  # the most of a run's stdout / stderr sent back (its end; JSON-escaped, both fit a 1 MiB header)
RUNNERS = ("native", "python")
CLIENT_RUNNERS = ("@native", "@python", "@app")  # what a host may ask for: app is the Android app's runner
SCRUBBED_ENV = ("EDGEPROBE_TOKEN", "EDGEPROBE_SERVE_TOKEN", "EDGEPROBE_SPLIT_TOKEN")


class Refused(ProtocolError):
    """A request refused with the connection still in sync (nothing of it is left unread)."""


class Fatal(ProtocolError):
    """A request refused whose payload was not read: the reply says so and the connection closes."""


# -- the structured run request -----------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One run argument: ``kind`` path | int | float | enum | name | address | flag."""

    kind: str
    lo: float = 0
    hi: float = 0
    choices: tuple[str, ...] = ()
    native_only: bool = False
    required: bool = False

    @property
    def takes(self) -> str:
        if self.kind in ("int", "float"):
            return f"{'an integer' if self.kind == 'int' else 'a number'} in {self.lo:g}..{self.hi:g}"
        return {"path": "a path relative to the work dir", "enum": f"one of {', '.join(self.choices)}",
                "name": "a name of letters, digits, '_', '.', '-'", "address": "HOST:PORT or none",
                "flag": "true or false"}[self.kind]


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,255}")
_METHOD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_ADDRESS = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9.\-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")

# In argv order; the flag of a key is ``--`` + the key with ``_`` as ``-`` (both runners' flags, PROTOCOL.md).
RUN_ARGS: dict[str, Arg] = {
    "model": Arg("path", required=True),
    "vectors": Arg("path"),
    "warmup": Arg("int", 0, 1_000_000),
    "iterations": Arg("int", 1, 100_000_000),
    "min_seconds": Arg("float", 0, 86_400),
    "max_iterations": Arg("int", 0, 1_000_000_000),
    "idle_s": Arg("float", 0, 3_600),
    "threads": Arg("int", 0, 4_096),
    "rtol": Arg("float", 0, 1e9),
    "atol": Arg("float", 0, 1e9),
    "method": Arg("name"),
    "output": Arg("path"),
    "etdump": Arg("path"),
    "save_outputs": Arg("path"),
    "split_server": Arg("address", native_only=True),
    "split_outputs": Arg("path", native_only=True),
    "split_token_file": Arg("path", native_only=True),
    "split_name": Arg("name", native_only=True),
    "split_send": Arg("int", 0, 1_000_000, native_only=True),
    "split_encoding": Arg("enum", choices=("fp32", "fp16", "int8"), native_only=True),
    "split_send_inputs": Arg("flag", native_only=True),
    "split_timeout_s": Arg("float", 0.001, 86_400, native_only=True),
}
FLAGS: dict[str, str] = {"--" + k.replace("_", "-"): k for k in RUN_ARGS}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def build_argv(runner: Any, args: Any, confine: Any) -> list[str]:
    """The runner's flags from a structured request: every value checked against ``RUN_ARGS``,
    every path through ``confine`` (a path strictly inside the work dir, absolute). Refused: a
    runner other than native/python, unknown keys, a value of the wrong kind or out of bounds."""
    if runner not in RUNNERS:
        raise Refused(f"run needs runner native or python, not {runner!r}")
    if not isinstance(args, dict):
        raise Refused("run needs args: a JSON object of run arguments (PROTOCOL.md)")
    unknown = sorted(str(k) for k in args if k not in RUN_ARGS)
    if unknown:
        raise Refused(f"run does not take {', '.join(repr(k) for k in unknown)}; "
                      f"the run arguments are {', '.join(RUN_ARGS)}")
    out: list[str] = []
    for key, spec in RUN_ARGS.items():
        if key not in args:
            if spec.required:
                raise Refused(f"run needs {key!r}")
            continue
        value, flag = args[key], _flag(key)
        if spec.native_only and runner != "native":
            raise Refused(f"{key!r} is for the native runner only")
        bad = Refused(f"run argument {key!r} must be {spec.takes}, not {str(value)[:80]!r}")
        if spec.kind == "path":
            out += [flag, str(confine(value))]
        elif spec.kind == "int":
            if not isinstance(value, int) or isinstance(value, bool) or not spec.lo <= value <= spec.hi:
                raise bad
            out += [flag, str(value)]
        elif spec.kind == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or not spec.lo <= value <= spec.hi:
                raise bad
            out += [flag, repr(float(value))]
        elif spec.kind == "enum":
            if value not in spec.choices:
                raise bad
            out += [flag, value]
        elif spec.kind == "name":
            pattern = _METHOD if key == "method" else _NAME
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise bad
            out += [flag, value]
        elif spec.kind == "address":
            if not isinstance(value, str) or not (value == "none" or _ADDRESS.fullmatch(value)) \
                    or (value != "none" and not 0 < int(value.rsplit(":", 1)[1]) < 65536):
                raise bad
            out += [flag, value]
        elif spec.kind == "flag":
            if not isinstance(value, bool):
                raise bad
            if value:
                out += [flag, "1"]
    return out


def request_from_argv(argv: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """The host's side: a runner argv (``["@native", "--model", P, "--warmup", "3", ...]``) as the
    structured run request. ``@app`` is the edgeprobe Android app's in-process runner (its core server
    takes runner "app"; this server refuses it in ``build_argv``). ValueError for anything the
    protocol cannot say."""
    argv = [str(a) for a in argv]
    if not argv or argv[0] not in CLIENT_RUNNERS:
        raise ValueError(f"only the runners can be run over tcp: argv[0] must be @native, @python or @app, "
                         f"not {argv[0] if argv else None!r}")
    args: dict[str, Any] = {}
    rest = argv[1:]
    for i in range(0, len(rest), 2):
        flag = rest[i]
        key = FLAGS.get(flag)
        if key is None:
            raise ValueError(f"a tcp runner takes no {flag!r}; its run arguments are {', '.join(FLAGS)}")
        if i + 1 >= len(rest):
            raise ValueError(f"{flag} needs a value")
        if key in args:
            raise ValueError(f"{flag} given twice")
        value, kind = rest[i + 1], RUN_ARGS[key].kind
        try:
            args[key] = (int(value) if kind == "int" else float(value) if kind == "float" else
                         value not in ("0", "false", "") if kind == "flag" else value)
        except ValueError:
            raise ValueError(f"{flag} takes {RUN_ARGS[key].takes}, not {value!r}") from None
    return {"op": "run", "runner": argv[0][1:], "args": args, "timeout_s": float(timeout_s)}


# -- the server ---------------------------------------------------------------------------------


def device_info(name: str) -> dict[str, str]:
    u = platform.uname()
    runtimes = ["python"]
    native = os.environ.get("EDGEPROBE_NATIVE_RUNNER")
    if native and os.access(native, os.X_OK):
        runtimes.insert(0, "native")
    return {"name": name, "os": u.system, "kernel": u.release, "machine": u.machine, "abi": u.machine,
            "hostname": u.node, "cores": str(os.cpu_count()), "runtimes": ",".join(runtimes), "version": __version__}


def _tail(f: Any) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - OUTPUT_TAIL_BYTES))
    text = f.read().decode("utf-8", errors="replace")
    return (f"[... {size - OUTPUT_TAIL_BYTES} bytes cut ...]\n" + text) if size > OUTPUT_TAIL_BYTES else text


class RunnerServer(BoundedServer):
    service = SERVICE

    def __init__(self, addr: tuple[str, int], *, token: str, workdir: Path, name: str,
                 native_runner: Optional[str] = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES, max_disk_bytes: int = DEFAULT_MAX_DISK_BYTES,
                 python_runner: Optional[Sequence[str]] = None, **limits: Any) -> None:
        self.workdir, self.name = workdir.resolve(), name
        self.native_runner, self.max_upload_bytes = native_runner, max_upload_bytes
        self.python_runner = list(python_runner or [sys.executable, "-m", "edgeprobe_runner"])
        self.uploads = Budget(max_inflight_bytes)
        self.max_disk_bytes = max_disk_bytes
        self._disk_lock = threading.Lock()
        self._disk_reserved = 0
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        super().__init__(addr, token=token, **limits)

    def info(self) -> dict[str, str]:
        return device_info(self.name)

    def confined(self, rel: Any) -> Path:
        """A client path as a file strictly inside the work dir, or Refused: not empty, relative, no
        ``..`` component, not the work dir itself, and still inside after symlinks are resolved."""
        if not isinstance(rel, str) or "\0" in rel or "\\" in rel:
            raise Refused(f"path {str(rel)[:200]!r} must be a string naming a file in the runner's work dir")
        parts = PurePosixPath(rel).parts
        if not rel or rel.startswith("/") or not parts or ".." in parts:
            raise Refused(f"path {rel[:200]!r} must name a file inside the runner's work dir "
                          "(relative, no '..', not the work dir itself)")
        p = (self.workdir / rel).resolve()
        if self.workdir not in p.parents:
            raise Refused(f"path {rel[:200]!r} leaves the runner's work dir")
        return p

    def disk_used(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.workdir):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return total

    def serve_connection(self, sock: socket.socket) -> None:
        while True:
            try:
                req = recv_msg(sock, MAX_HEADER_BYTES)
            except ProtocolError as exc:
                if "after 0 of 4 bytes" not in str(exc):  # not a clean close: say why before closing
                    send_msg(sock, {"ok": False, "closed": True, "error": f"bad frame: {exc}; closing"})
                    close_after_refusal(sock)
                return
            try:
                self.dispatch(sock, req)
            except Fatal as exc:
                send_msg(sock, {"ok": False, "closed": True, "error": str(exc)})
                close_after_refusal(sock)
                return
            except Refused as exc:
                send_msg(sock, {"ok": False, "error": str(exc)})

    def dispatch(self, sock: socket.socket, req: dict[str, Any]) -> None:
        op = req.get("op")
        if op == "info":
            send_msg(sock, {"ok": True, "info": self.info()})
        elif op == "push":
            self._push(sock, req)
        elif op == "pull":
            src = self.confined(req.get("path"))
            try:
                f = open(src, "rb")
            except OSError:
                raise Refused(f"no file {req.get('path')!r} on the device") from None
            with f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise Refused(f"{req.get('path')!r} is not a file")
                size = st.st_size
                try:
                    send_file(sock, {"ok": True, "size": size}, f, size)
                except ProtocolError:  # the file shrank while it was sent: the stream is broken
                    raise OSError("file changed while it was pulled") from None
        elif op == "remove":
            p = self.confined(req.get("path"))
            try:
                if p.is_dir():
                    raise Refused(f"{req.get('path')!r} is a directory; remove deletes files only")
                p.unlink()
                removed = True
            except FileNotFoundError:
                removed = False
            send_msg(sock, {"ok": True, "removed": removed})
        elif op == "run":
            self._run(sock, req)
        else:
            raise Refused(f"unknown op {str(op)[:80]!r} (push, pull, remove, run, info)")

    def _refuse_push(self, sock: socket.socket, size: int, why: str) -> None:
        if size <= DRAIN_LIMIT_BYTES:
            discard(sock, size)
            raise Refused(why)
        raise Fatal(f"{why}; the payload was not read, closing")

    def _push(self, sock: socket.socket, req: dict[str, Any]) -> None:
        size = req.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise Fatal("push needs the payload's size (a non-negative integer); closing")
        if size > self.max_upload_bytes:
            raise Fatal(f"upload of {size} bytes is over this runner's {self.max_upload_bytes}-byte limit "
                        "(--max-upload-bytes); the payload was not read, closing")
        try:
            dest = self.confined(req.get("path"))
        except Refused as exc:
            self._refuse_push(sock, size, str(exc))
        if dest.is_dir():
            self._refuse_push(sock, size, f"push path {req.get('path')!r} is a directory")
        digest = req.get("sha256")
        if not isinstance(digest, str):
            self._refuse_push(sock, size, "push needs the payload's sha256 (hex)")
        if not self.uploads.reserve(size):
            self._refuse_push(sock, size, f"busy: {self.uploads.used} bytes of uploads are in flight, and "
                                          f"{size} more would pass this runner's {self.uploads.total}-byte budget "
                                          "(--max-inflight-bytes); try again later")
        try:
            with self._disk_lock:
                replaced = dest.stat().st_size if dest.is_file() else 0
                used = self.disk_used() + self._disk_reserved
                fits = used - replaced + size <= self.max_disk_bytes
                if fits:
                    self._disk_reserved += size
            if not fits:
                self._refuse_push(sock, size, f"the work dir {self.workdir} holds {used} bytes; {size} more would "
                                              f"pass its {self.max_disk_bytes}-byte quota (--max-disk-bytes); "
                                              "clean it or raise the quota")
            try:
                self._receive(sock, dest, size, digest)
            finally:
                with self._disk_lock:
                    self._disk_reserved -= size
        finally:
            self.uploads.release(size)
        send_msg(sock, {"ok": True, "sha256": digest})  # after the budget is released: the next push fits

    def _receive(self, sock: socket.socket, dest: Path, size: int, digest: str) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
        h = hashlib.sha256()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                recv_to_file(sock, size, f, h)
            if h.hexdigest() != digest:
                raise Refused("sha256 of the received file does not match; nothing was kept")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def _run(self, sock: socket.socket, req: dict[str, Any]) -> None:
        if "argv" in req:
            raise Refused("run takes a structured request {runner, args, timeout_s}, not an argv "
                          "(runner protocol v2); upgrade the host's edgeprobe")
        runner = req.get("runner")
        flags = build_argv(runner, req.get("args"), self.confined)
        timeout_s = req.get("timeout_s", 300.0)
        if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or not math.isfinite(timeout_s) \
                or not 0 < timeout_s <= 86_400:
            raise Refused("run timeout_s must be a number of seconds in (0, 86400]")
        if runner == "native":
            if not self.native_runner:
                raise Refused("this runner server has no native runner (start it with --native-runner)")
            head = [self.native_runner]
        else:
            head = list(self.python_runner)
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        t0 = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(head + flags, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        cwd=self.workdir, start_new_session=True, env=env)
            except OSError as exc:
                raise Refused(f"cannot start the {runner} runner: {exc}") from None
            try:
                code: Optional[int] = proc.wait(timeout=float(timeout_s))
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code, timed_out = None, True
            send_msg(sock, {"ok": True, "exit_code": code, "stdout": _tail(out), "stderr": _tail(err),
                            "duration_s": time.monotonic() - t0, "timed_out": timed_out})


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
    p = argparse.ArgumentParser(prog="edgeprobe runner serve", description="Serve this device's runners over TCP.",
                                allow_abbrev=False)
    p.add_argument("--host", default="127.0.0.1", help="address to listen and advertise on")
    p.add_argument("--port", type=int, default=0)
    add_server_args(p, "EDGEPROBE_TOKEN", DEFAULT_MAX_INFLIGHT_BYTES)
    p.add_argument("--name", default=f"edgeprobe-{socket.gethostname()}")
    p.add_argument("--workdir", default=None)
    p.add_argument("--native-runner", default=os.environ.get("EDGEPROBE_NATIVE_RUNNER"))
    p.add_argument("--max-upload-bytes", type=int, default=DEFAULT_MAX_UPLOAD_BYTES, help="largest single push")
    p.add_argument("--max-disk-bytes", type=int, default=DEFAULT_MAX_DISK_BYTES,
                   help="quota of the work dir: a push that would pass it is refused")
    p.add_argument("--idle-timeout-s", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                   help="an authenticated connection idle this long between requests is closed")
    p.add_argument("--no-zeroconf", action="store_true")
    args = p.parse_args(argv)
    if min(args.max_upload_bytes, args.max_inflight_bytes, args.max_disk_bytes) < 0 or args.max_connections < 1 \
            or args.auth_timeout_s <= 0 or args.idle_timeout_s <= 0:
        p.error("byte limits >= 0, --max-connections >= 1 and timeouts > 0 are required")
    token = server_token(p, args, "EDGEPROBE_TOKEN")
    workdir = Path(args.workdir) if args.workdir else Path.home() / ".cache" / "edgeprobe-runner"
    if args.native_runner:
        os.environ["EDGEPROBE_NATIVE_RUNNER"] = args.native_runner
    server = RunnerServer((args.host, args.port), token=token, workdir=workdir, name=args.name,
                          native_runner=args.native_runner, max_upload_bytes=args.max_upload_bytes,
                          max_inflight_bytes=args.max_inflight_bytes, max_disk_bytes=args.max_disk_bytes,
                          max_connections=args.max_connections, auth_deadline_s=args.auth_timeout_s,
                          idle_timeout_s=args.idle_timeout_s)
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


if __name__ == "__main__":
    sys.exit(main())
