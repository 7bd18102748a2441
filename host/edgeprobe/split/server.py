"""`edgeprobe serve`: the cloud side of a split. It keeps tail programs in memory and runs them on
the activations a device sends, on CUDA when available.

Wire protocol: the framing and the v2 handshake of ``edgeprobe_runner.wire`` (service ``"split"``):
every message is a 4-byte big-endian length + a UTF-8 JSON header object (at most 4 KiB before
authentication, 1 MiB after), optionally followed by exactly ``size`` raw payload bytes, ``size``
being a field of that header. Every reply carries ``ok``; a failed request gets ``{"ok": false,
"error": "<what and what to do>"}`` and the connection stays usable, except where the payload could
not be read or authentication failed: then the reply also says ``"closed": true`` and the server
closes the connection. A reply with a payload carries its ``size`` (only ``run`` replies have one).

Requests, in order:

- the handshake (must come first; the server speaks first with a challenge): the client proves it
  holds the token with an HMAC over both nonces, the server proves it back; the token itself never
  crosses the wire. A wrong MAC gets ``{ok: false, closed: true, error: "unauthorized: wrong token"}``
  and the connection is closed.
- ``load {name, size, sha256}`` + ``size`` bytes -> ``{ok, name, sha256, program_bytes, load_ms,
  device}``. The bytes are a tail program written by ``torch.export.save`` (an ExportedProgram). They
  are checked against ``sha256``, loaded with ``torch.export.load``, moved to the server's device and
  kept in memory under ``name`` (a dictionary key, never a path; the same name again replaces it).
  Nothing is written to disk.
- ``run {name, size, encoding, reply_encoding?}`` + ``size`` bytes -> ``{ok, size, encoding, outputs,
  server_ms, decode_ms, encode_ms, handle_ms}`` + ``size`` bytes of outputs. The request payload is the tail's
  inputs as ``edgeprobe_runner.codec.encode(tensors, encoding)`` (fp32, fp16 or int8; a frame
  describes its own encoding, ``encoding`` is checked against the codec's names). The outputs
  (tensor, tuple, list or dict leaves, in pytree order) are encoded with ``reply_encoding``, **fp32
  by default**: the downlink carries the final outputs, usually small (logits), and fp32 keeps the
  fidelity cost of a split at the cut alone; ask for fp16/int8 to trade. ``server_ms`` is the tail's
  compute alone (inputs already on the device; ``torch.cuda.synchronize()`` before and after on
  CUDA); ``decode_ms`` is codec decode + copy to the device, ``encode_ms`` copy back + codec encode.
  ``handle_ms`` is all the server did between the request's last byte and writing the reply (the three
  parts, lookups, the reply's header). Socket reads and writes are in none of them: they are the
  network part of the client's round trip.
- ``unload {name}`` -> ``{ok, name, unloaded}`` (``unloaded`` false when no such program was kept):
  frees the name, so that a long-running server's ``--max-programs`` is not used up by finished plans.
- ``info`` -> ``{ok, info}``, info = ``{device (cpu or the CUDA device's name), device_type, torch,
  cuda, threads, max_bytes, programs, version}``.

Limits (each refusal is one line; the server goes on serving other connections): a connection cap
(``--max-connections``, 64) and at most 8 unauthenticated connections per client address; an
authentication deadline (``--auth-timeout-s``, 10 s); an idle timeout on every read and write after
it (``--timeout-s``, 120 s); every payload (``--max-bytes``, default 1 GiB): a ``load`` or ``run``
whose ``size`` is over it is refused *before* its payload is read, so the reply is sent and the
connection closed; a global budget of payload bytes being received at once (``--max-inflight-bytes``,
2 GiB), reserved before a payload is read (read in chunks: a ``size`` claim allocates nothing); the
number of programs kept (``--max-programs``).

Trust: only holders of the token can talk to the server. ``torch.export.load`` may fall back to
unpickling, so loading a program is as powerful as running code on the server: give the token only
to those you would let do that, and keep the default ``--host 127.0.0.1`` unless the network is yours.

The host-side client is :class:`edgeprobe.split.client.TailClient` (re-exported here); the device-side client (no host package) is
``python -m edgeprobe_runner.split_client``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Optional, Sequence

import torch

from edgeprobe_runner import codec
from edgeprobe_runner.wire import (BoundedServer, Budget, ProtocolError, add_server_args, close_after_refusal,
                                   recv_msg, recv_payload, send_msg, serve_until_stopped, server_token)

SERVICE = "split"
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_INFLIGHT_BYTES = 2 << 30
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_PROGRAMS = 64
MAX_NAME_CHARS = 256
ENCODINGS: tuple[str, ...] = tuple(getattr(codec, "ENCODINGS", ("fp32", "fp16", "int8")))


class _Fail(Exception):
    """A request refused with a message; the connection stays in sync."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch.cuda.is_available() is False on this machine "
                         f"(torch {torch.__version__}); use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flatten(out: Any) -> list[torch.Tensor]:
    leaves = torch.utils._pytree.tree_leaves(out)
    bad = [type(x).__name__ for x in leaves if not isinstance(x, torch.Tensor)]
    if bad:
        raise _Fail(f"the tail returned non-tensor outputs ({', '.join(sorted(set(bad)))}); only tensors can be sent back")
    return leaves


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class _Tail:
    def __init__(self, module: torch.nn.Module, size: int, sha256: str) -> None:
        self.module, self.size, self.sha256 = module, size, sha256


class TailServer(BoundedServer):
    service = SERVICE

    def __init__(self, addr: tuple[str, int], *, token: str, device: torch.device,
                 max_bytes: int = DEFAULT_MAX_BYTES, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_programs: int = DEFAULT_MAX_PROGRAMS, max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
                 **limits: Any) -> None:
        self.device = device
        self.max_bytes, self.timeout_s, self.max_programs = max_bytes, timeout_s, max_programs
        self.payloads = Budget(max_inflight_bytes)
        self.programs: dict[str, _Tail] = {}
        self.lock = threading.Lock()
        super().__init__(addr, token=token, idle_timeout_s=timeout_s, **limits)

    def info(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        with self.lock:
            names = sorted(self.programs)
        from edgeprobe import __version__

        return {"device": torch.cuda.get_device_name(self.device) if cuda else "cpu",
                "device_type": self.device.type, "torch": torch.__version__,
                "cuda": torch.version.cuda if cuda else None, "threads": torch.get_num_threads(),
                "max_bytes": self.max_bytes, "programs": names, "version": __version__,
                # where it runs, so that a planner on the same host can keep off its cores (split finding 16)
                "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                "host_id": _host_id()}

    # -- requests (payload already read) ------------------------------------------------------

    def load(self, req: dict[str, Any], payload: bytearray) -> tuple[dict[str, Any], bytes]:
        name = req.get("name")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise _Fail(f"load needs a name: a non-empty string of at most {MAX_NAME_CHARS} characters")
        digest = hashlib.sha256(payload).hexdigest()
        if digest != req.get("sha256"):
            raise _Fail(f"sha256 of the received program ({digest[:12]}...) does not match the request's; nothing was loaded")
        with self.lock:
            if name not in self.programs and len(self.programs) >= self.max_programs:
                raise _Fail(f"this server already keeps {self.max_programs} programs (--max-programs); "
                            "load under an existing name to replace one")
        t0 = time.perf_counter_ns()
        try:
            ep = torch.export.load(io.BytesIO(payload))
        except Exception as exc:  # noqa: BLE001
            raise _Fail(f"cannot load {name!r} with torch.export.load (write it with torch.export.save): "
                        f"{_first_line(exc)}") from None
        if not isinstance(ep, torch.export.ExportedProgram):
            raise _Fail(f"{name!r} is not an ExportedProgram")
        try:
            if self.device.type != "cpu":
                from torch.export.passes import move_to_device_pass

                ep = move_to_device_pass(ep, self.device)
            module = ep.module()
        except Exception as exc:  # noqa: BLE001
            raise _Fail(f"cannot prepare {name!r} on {self.device}: {_first_line(exc)}") from None
        with self.lock:
            self.programs[name] = _Tail(module, len(payload), digest)
        return {"ok": True, "name": name, "sha256": digest, "program_bytes": len(payload),
                "load_ms": (time.perf_counter_ns() - t0) / 1e6, "device": str(self.device)}, b""

    def unload(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req.get("name")
        if not isinstance(name, str) or not name:
            raise _Fail("unload needs the name of a loaded program")
        with self.lock:
            gone = self.programs.pop(name, None) is not None
        return {"ok": True, "name": name, "unloaded": gone}

    def run(self, req: dict[str, Any], payload: bytearray) -> tuple[dict[str, Any], bytes]:
        name = req.get("name")
        with self.lock:
            tail = self.programs.get(name) if isinstance(name, str) else None
            names = sorted(self.programs)
        if tail is None:
            raise _Fail(f"no tail program named {name!r} on this server (loaded: {names or 'none'}); load it first")
        encoding = req.get("encoding")
        reply_encoding = req.get("reply_encoding", "fp32")
        for field, value in (("encoding", encoding), ("reply_encoding", reply_encoding)):
            if value not in ENCODINGS:
                raise _Fail(f"{field} must be one of {', '.join(ENCODINGS)}, not {value!r}")
        dev = self.device
        t0 = time.perf_counter_ns()
        try:
            inputs = [t.to(dev) for t in codec.decode(payload)]
        except Exception as exc:  # noqa: BLE001
            raise _Fail(f"cannot decode the {encoding} activations: {_first_line(exc)}") from None
        _sync(dev)
        t1 = time.perf_counter_ns()
        try:
            with torch.no_grad():
                out = tail.module(*inputs)
            _sync(dev)
        except Exception as exc:  # noqa: BLE001
            shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in inputs)
            raise _Fail(f"tail {name!r} failed on inputs [{shapes}]: {_first_line(exc)}") from None
        t2 = time.perf_counter_ns()
        outputs = [t.detach().cpu() for t in _flatten(out)]
        data = codec.encode(outputs, reply_encoding)
        t3 = time.perf_counter_ns()
        return {"ok": True, "size": len(data), "encoding": reply_encoding, "outputs": len(outputs),
                "server_ms": (t2 - t1) / 1e6, "decode_ms": (t1 - t0) / 1e6, "encode_ms": (t3 - t2) / 1e6}, data


    def profile(self, req: dict[str, Any], payload: bytearray) -> tuple[dict[str, Any], bytes]:
        """Per-node times of a loaded program on this server's device (the split planner's server
        costs): ``profile {name, runs}`` + fp32 codec inputs -> ``{per_node_ms, whole_ms}``."""
        from edgeprobe.split.costs import time_nodes

        name = req.get("name")
        runs = req.get("runs", 10)
        if not isinstance(runs, int) or not 1 <= runs <= 1000:
            raise _Fail("profile runs must be an integer in 1..1000")
        with self.lock:
            tail = self.programs.get(name) if isinstance(name, str) else None
        if tail is None or not isinstance(tail.module, torch.fx.GraphModule):
            raise _Fail(f"no program named {name!r} to profile; load it first")
        try:
            inputs = tuple(codec.decode(payload))
        except Exception as exc:  # noqa: BLE001
            raise _Fail(f"cannot decode the profile inputs: {_first_line(exc)}") from None
        per_node = time_nodes(tail.module, inputs, device=str(self.device), runs=runs, warmup=2)
        dev = self.device
        whole = []
        with torch.no_grad():
            x = [t.to(dev) for t in inputs]
            for _ in range(runs):
                _sync(dev)
                t0 = time.perf_counter_ns()
                tail.module(*x)
                _sync(dev)
                whole.append((time.perf_counter_ns() - t0) / 1e6)
        whole.sort()
        return {"ok": True, "per_node_ms": per_node, "whole_ms": whole[len(whole) // 2],
                "device": self.info()["device"]}, b""


    # -- one authenticated connection -----------------------------------------------------------

    def serve_connection(self, sock: socket.socket) -> None:
        while True:
            try:
                req = recv_msg(sock)
            except ProtocolError as exc:
                if "after 0 of 4 bytes" not in str(exc):  # not a clean close: say why before closing
                    send_msg(sock, {"ok": False, "closed": True, "error": f"bad frame: {exc}; closing"})
                    close_after_refusal(sock)
                return
            if not self.dispatch(sock, req):
                close_after_refusal(sock)
                return

    def dispatch(self, sock: socket.socket, req: dict[str, Any]) -> bool:
        """Answer one request; False when the connection must be closed (payload not read)."""
        op = req.get("op")
        payload = bytearray()
        if op in ("load", "run", "profile"):
            size = req.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                send_msg(sock, {"ok": False, "closed": True,
                                "error": f"{op} needs the payload's size (a non-negative integer); closing"})
                return False
            if size > self.max_bytes:
                send_msg(sock, {"ok": False, "closed": True, "error": f"{op} payload of {size} bytes is over this server's "
                                f"{self.max_bytes}-byte limit (--max-bytes); the payload was not read, closing"})
                return False
            if not self.payloads.reserve(size):
                send_msg(sock, {"ok": False, "closed": True,
                                "error": f"busy: {self.payloads.used} payload bytes are being received, and {size} more "
                                f"would pass this server's {self.payloads.total}-byte budget (--max-inflight-bytes); "
                                "the payload was not read, closing; try again later"})
                return False
            try:
                payload = recv_payload(sock, size)
            finally:
                self.payloads.release(size)
        t_start = time.perf_counter_ns()
        try:
            if op == "info":
                reply, data = {"ok": True, "info": self.info()}, b""
            elif op == "load":
                reply, data = self.load(req, payload)
            elif op == "run":
                reply, data = self.run(req, payload)
            elif op == "profile":
                reply, data = self.profile(req, payload)
            elif op == "unload":
                reply, data = self.unload(req), b""
            else:
                raise _Fail(f"unknown op {str(op)[:80]!r} (load, run, profile, unload, info)")
        except _Fail as exc:
            reply, data = {"ok": False, "error": str(exc)}, b""
        except Exception as exc:  # noqa: BLE001  (a bug or an odd program must not take the server down)
            reply, data = {"ok": False, "error": f"{str(op)[:80]} failed: {_first_line(exc)}"}, b""
        if op == "run" and reply.get("ok"):  # everything between the request's last byte and the reply
            reply["handle_ms"] = (time.perf_counter_ns() - t_start) / 1e6
        send_msg(sock, reply, data)
        return True


def _host_id() -> Optional[str]:
    """The kernel's boot id: equal for two processes on one host (network namespaces included)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="edgeprobe serve", allow_abbrev=False,
                                description="Serve tail programs of split models over TCP (the cloud side).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=0, help="0: pick a free port (printed)")
    add_server_args(p, "EDGEPROBE_SERVE_TOKEN", DEFAULT_MAX_INFLIGHT_BYTES)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where tails run (auto: CUDA if available)")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest load or run payload, bytes")
    p.add_argument("--max-programs", type=int, default=DEFAULT_MAX_PROGRAMS, help="most tail programs kept in memory")
    p.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                   help="idle timeout of an authenticated connection, per read/write")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    p.add_argument("--cpus", metavar="LIST", help="run on these cores only, e.g. 1 or 2-3 (and as many torch threads, "
                                                  "unless --threads): keeps off the cores of a device half on this host")
    args = p.parse_args(argv)
    if args.cpus:
        from edgeprobe.devices.probe import parse_cores

        try:
            cores = parse_cores(args.cpus)
            os.sched_setaffinity(0, cores)  # before any thread starts: they all inherit it
        except (ValueError, OSError) as exc:
            p.error(f"--cpus {args.cpus!r}: {exc}")
        args.threads = args.threads or len(cores)
    if args.max_bytes < 0 or args.max_programs < 1 or args.timeout_s <= 0 or args.threads < 0 \
            or args.auth_timeout_s <= 0 or args.max_connections < 1 or args.max_inflight_bytes < 0:
        p.error("--max-bytes >= 0, --max-inflight-bytes >= 0, --max-programs >= 1, --max-connections >= 1, "
                "--timeout-s > 0, --auth-timeout-s > 0 and --threads >= 0 are required")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    token = server_token(p, args, "EDGEPROBE_SERVE_TOKEN")
    server = TailServer((args.host, args.port), token=token, device=device, max_bytes=args.max_bytes,
                        timeout_s=args.timeout_s, max_programs=args.max_programs,
                        max_inflight_bytes=args.max_inflight_bytes, max_connections=args.max_connections,
                        auth_deadline_s=args.auth_timeout_s)
    info = server.info()
    print(json.dumps({"listening": f"{args.host}:{server.port}", "token": token, "device": info["device"],
                      "device_type": info["device_type"], "torch": info["torch"], "max_bytes": args.max_bytes}),
          flush=True)
    serve_until_stopped(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())


from edgeprobe.split.client import TailClient  # noqa: E402,F401 - re-exported: the client of this server
