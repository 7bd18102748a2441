"""The device side of a split: run the head here (ExecuTorch), send its activations to
``edgeprobe serve`` (the tail), get the outputs back, and time every part of it.

    EDGEPROBE_SPLIT_TOKEN=T python -m edgeprobe_runner.split_client --head head.pte --server HOST:PORT --name N \\
        --encoding fp32|fp16|int8 --inputs inputs.bin --iterations 20 --warmup 3 --out result.json \\
        [--outputs-file outputs.bin] [--reply-encoding fp32]

The server's token: ``--token-file PATH`` (the file's first line), else ``$EDGEPROBE_SPLIT_TOKEN``;
never on the command line, where other users of the device could read it.

``--inputs``: the model's input tensors as ``edgeprobe_runner.codec.encode(tensors, "fp32")``.
Without ``--head`` (cloud only) the inputs themselves are sent, with ``--encoding``.

The wire protocol is the one in ``edgeprobe/split/server.py`` (the framing and the v2 handshake of
``edgeprobe_runner.wire``: the token never crosses the wire, and the server must prove it holds it).
It must not import the host package.

Every timed iteration (``time.monotonic_ns``) records, in ms: ``head_ms`` (the head's execute; 0
without a head), ``encode_ms`` (codec encode of the activations), ``round_trip_ms`` (send the run
request, receive the whole reply: network + server), ``server_ms``, ``server_decode_ms`` and
``server_encode_ms`` (from the reply), ``network_ms`` (round trip - the three server parts),
``decode_ms`` (codec decode of the outputs) and ``e2e_ms`` (all of it, from before the head to after
the decode); and the bytes put on the connection each way, framing included.

``--jobs``: one process runs many splits (the host's sweep over candidates), saving the start-up
per split (importing the runtime, about 2.5 s on a 2-core VM): each stdin line is a JSON list of the
arguments above for one split; after each, one JSON line ``{"out": PATH, "status": ...}`` on stdout.

The result (``--out``): the native runner's split record (PROTOCOL.md "Split mode": the same keys,
per iteration too, ``server_handle_ms`` included, null where nothing was measured), plus ``status:
"ok"|"error"``, ``error`` (``{code, message}``, the native runner's codes: ``split_protocol`` for a
malformed reply, ``connection_lost``, ``refused``, ``unauthenticated_server``, ``server_error``, ...),
``head``, ``outputs_sha256`` and ``server_info`` (tests/conformance/test_split.py holds both to it).
With ``--outputs-file PATH``, ``PATH.tail`` is the server's last reply frame as it came
(``tail_outputs_file``). ``outputs_sha256`` is the sha256
of the final outputs encoded with the codec's fp32, the bytes ``--outputs-file`` receives, for the
host to check fidelity against the unsplit model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from edgeprobe_runner import codec
from edgeprobe_runner.wire import (DEFAULT_MAX_HEADER_BYTES, ProtocolError, client_handshake, parse_header,
                                   read_token_file, recv_exact, send_msg)

SCHEMA_VERSION = 1
MAX_REPLY_PAYLOAD = 1 << 31  # bytes of one reply's payload; a larger `size` is a split_protocol error (PROTOCOL.md)


class SplitError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edgeprobe_runner.split_client", allow_abbrev=False,
                                description="Run a split: head here, tail on `edgeprobe serve`.")
    p.add_argument("--head", help="the head .pte (omit for cloud only: the inputs are sent)")
    p.add_argument("--server", required=True, help="HOST:PORT of edgeprobe serve, or none (device only: the head is "
                                                   "the whole model)")
    p.add_argument("--token-file", help="a file holding the server's token (default: $EDGEPROBE_SPLIT_TOKEN)")
    p.add_argument("--name", default="", help="the tail's name on the server")
    p.add_argument("--send", type=int, help="send the first N head outputs (the crossing tensors; default all); "
                                            "the rest are model outputs that stay on the device")
    p.add_argument("--encoding", default="fp32", help="encoding of the activations sent (fp32, fp16, int8)")
    p.add_argument("--reply-encoding", default="fp32", help="encoding of the outputs sent back (default fp32)")
    p.add_argument("--inputs", required=True, help="input tensors, codec fp32 encoding")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--timeout-s", type=float, default=60.0, help="socket timeout per read/write")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--outputs-file", help="write the final outputs here (codec fp32)")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0 or args.timeout_s <= 0:
        p.error("--iterations >= 1, --warmup >= 0 and --timeout-s > 0 are required")
    if args.server == "none" and not args.head:
        p.error("--server none (device only) needs --head")
    args.token = ""
    if args.server != "none":
        try:
            args.token = read_token_file(args.token_file) if args.token_file else \
                os.environ.get("EDGEPROBE_SPLIT_TOKEN", "")
        except (OSError, ValueError) as exc:
            p.error(f"--token-file: {exc}")
        if not (args.token and args.name):
            p.error("a server needs its token (--token-file or $EDGEPROBE_SPLIT_TOKEN) and --name")
    return args


def _connect(server: str, token: str, timeout_s: float) -> tuple[socket.socket, dict[str, Any]]:
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise SplitError("usage", f"--server must be HOST:PORT, not {server!r}")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except OSError as exc:
        raise SplitError("connect_failed", f"cannot connect to {server}: {exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        info = client_handshake(sock, token, "split", server)
    except (OSError, ProtocolError) as exc:
        sock.close()
        raise SplitError(_handshake_code(exc), f"handshake with {server}: {exc}") from None
    return sock, info


def _handshake_code(exc: BaseException) -> str:
    """The native runner's error codes for a failed handshake (PROTOCOL.md, "Handshake"): the server
    refused us (``refused``), did not prove it holds the token (``unauthenticated_server``), spoke
    something else (``split_protocol``) or went away (``connection_lost``)."""
    msg = str(exc)
    if isinstance(exc, OSError) or "connection closed" in msg:
        return "connection_lost"
    if "did not prove it holds the token" in msg:
        return "unauthenticated_server"
    if "refused the connection" in msg:
        return "refused"
    return "split_protocol"


def _recv_reply(sock: socket.socket, server: str) -> tuple[dict[str, Any], bytes, int]:
    """One run reply: (header, payload, bytes read). A header over 1 MiB, one that is not a JSON
    object, a success without a ``size`` that is an integer in [0, 2^31]: ``split_protocol``; the
    connection gone before the reply is whole: ``connection_lost`` (as in the native runner)."""
    def exact(n: int) -> bytes:
        try:
            return recv_exact(sock, n)
        except (OSError, ProtocolError) as exc:
            raise SplitError("connection_lost", f"connection to {server} lost while receiving the reply: {exc}") from None

    (n,) = struct.unpack(">I", exact(4))
    if n > DEFAULT_MAX_HEADER_BYTES:
        raise SplitError("split_protocol", f"the server's message header of {n} bytes is over the "
                                           f"{DEFAULT_MAX_HEADER_BYTES}-byte limit")
    try:
        reply = parse_header(exact(n))
    except ProtocolError as exc:
        raise SplitError("split_protocol", f"the server's reply: {exc}") from None
    size = 0
    if reply.get("ok") is True and "size" in reply:
        size = reply["size"]
        if isinstance(size, float) and size.is_integer():
            size = int(size)
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_REPLY_PAYLOAD:
            raise SplitError("split_protocol", f"the server's reply has a 'size' that is not an integer in "
                                               f"[0, {MAX_REPLY_PAYLOAD}]: {str(size)[:40]}")
    data = exact(size) if size else b""
    return reply, data, 4 + n + len(data)


def _reply_ms(reply: dict[str, Any], key: str) -> float:
    v = reply.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise SplitError("split_protocol", f"the server's run reply has no number '{key}' (an older or foreign server?)")
    return float(v)


def _portable_lib():
    """ExecuTorch's runtime bindings without ``executorch.exir``.

    ``portable_lib`` imports ``executorch.exir._warnings`` for one warning class, and importing it
    runs ``executorch/exir/__init__.py``: torch.export, EXIR passes, about 10 s on this 2-core VM
    per process. The device side needs none of the compiler, so that one small module is loaded by
    path under a bare package entry (only when exir is not already imported). A split client is a
    short-lived process that never imports exir, so the stub cannot shadow a real import."""
    import importlib.util
    import os
    import types

    import executorch

    if "executorch.exir" not in sys.modules:
        path = os.path.join(list(executorch.__path__)[0], "exir", "_warnings.py")
        spec = importlib.util.spec_from_file_location("executorch.exir._warnings", path)
        if spec is not None and spec.loader is not None:
            pkg = types.ModuleType("executorch.exir")
            pkg.__path__ = []  # a package with nothing else in it
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            sys.modules["executorch.exir"], sys.modules["executorch.exir._warnings"] = pkg, mod
    from executorch.extension.pybindings import portable_lib

    return portable_lib


class _Head:
    def __init__(self, module) -> None:
        self._module = module

    def execute(self, inputs: list) -> list:
        return list(self._module.run_method("forward", tuple(inputs)))


def _load_head(path: str):
    try:
        module = _portable_lib()._load_for_executorch(path)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SplitError("load_failed", f"cannot load {path} method 'forward': {msg}") from None
    return _Head(module)


def _ms(a: int, b: int) -> float:
    return (b - a) / 1e6


def measure(args: argparse.Namespace, record: dict[str, Any]) -> None:
    try:
        inputs = list(codec.decode(Path(args.inputs).read_bytes()))
    except Exception as exc:  # noqa: BLE001  (missing, truncated or not codec bytes)
        raise SplitError("bad_inputs", f"cannot read the inputs {args.inputs} (codec fp32): {exc}") from None
    head = _load_head(args.head) if args.head else None
    if args.server == "none":  # device only: the head is the whole model
        assert head is not None
        outputs: list = []
        for i in range(args.warmup + args.iterations):
            t0 = time.monotonic_ns()
            outputs = list(head.execute(inputs))
            t1 = time.monotonic_ns()
            if i >= args.warmup:
                # nothing was encoded, sent or served: null, as in the native runner (PROTOCOL.md)
                record["iterations"].append({"head_ms": _ms(t0, t1), "encode_ms": None, "round_trip_ms": None,
                                             "server_ms": None, "server_decode_ms": None, "server_encode_ms": None,
                                             "server_handle_ms": None, "network_ms": None, "decode_ms": None,
                                             "e2e_ms": _ms(t0, t1), "bytes_up": 0, "bytes_down": 0})
        record["bytes_up"] = record["bytes_down"] = record["payload_bytes_up"] = record["payload_bytes_down"] = 0
        record["head_outputs_count"] = len(outputs)
        _write_outputs(args, record, outputs)
        return
    sock, info = _connect(args.server, args.token, args.timeout_s)
    record["server_info"] = info
    outputs = []
    kept: list = []
    try:
        for i in range(args.warmup + args.iterations):
            t0 = time.monotonic_ns()
            acts = list(head.execute(inputs)) if head is not None else inputs
            if args.send is not None:
                acts, kept = acts[: args.send], acts[args.send:]
            t1 = time.monotonic_ns()
            payload = codec.encode(acts, args.encoding)
            t2 = time.monotonic_ns()
            header = {"op": "run", "name": args.name, "encoding": args.encoding,
                      "reply_encoding": args.reply_encoding, "size": len(payload)}
            try:
                send_msg(sock, header, payload)
            except (OSError, ProtocolError) as exc:
                raise SplitError("connection_lost", f"connection to {args.server} lost during run "
                                 f"({len(payload)}-byte payload): {exc}") from None
            reply, data, bytes_down = _recv_reply(sock, args.server)
            t3 = time.monotonic_ns()
            if reply.get("ok") is not True:
                raise SplitError("server_error", f"the server refused run {args.name!r}: "
                                 f"{' '.join(str(reply.get('error', 'no reason given')).split())[:200]}")
            try:  # checked (magic, header, shapes, nbytes, no trailing bytes), as an app would before using them
                outputs = list(codec.decode(data))
            except (ValueError, codec.CodecError) as exc:
                raise SplitError("split_protocol", f"the server's reply frame: {exc}") from None
            t4 = time.monotonic_ns()
            srv, sdec, senc = (_reply_ms(reply, k) for k in ("server_ms", "decode_ms", "encode_ms"))
            handle = reply.get("handle_ms")
            handle = float(handle) if isinstance(handle, (int, float)) and not isinstance(handle, bool) else None
            it = {"head_ms": _ms(t0, t1) if head is not None else None, "encode_ms": _ms(t1, t2),  # cloud only: no head
                  "round_trip_ms": _ms(t2, t3), "server_ms": srv, "server_decode_ms": sdec, "server_encode_ms": senc,
                  "server_handle_ms": handle, "network_ms": _ms(t2, t3) - srv - sdec - senc, "decode_ms": _ms(t3, t4),
                  "e2e_ms": _ms(t0, t4), "bytes_up": 4 + len(json.dumps(header).encode()) + len(payload),
                  "bytes_down": bytes_down}
            if i >= args.warmup:
                record["iterations"].append(it)
                record["bytes_up"], record["bytes_down"] = it["bytes_up"], it["bytes_down"]
                record["payload_bytes_up"], record["payload_bytes_down"] = len(payload), len(data)
    finally:
        sock.close()
    record["head_outputs_count"] = len(acts) + len(kept) if head is not None else 0
    if args.outputs_file:  # the server's reply frame as it came, beside the outputs (the native runner's PATH.tail)
        Path(args.outputs_file + ".tail").write_bytes(data)
        record["tail_outputs_file"] = args.outputs_file + ".tail"
    _write_outputs(args, record, ([*acts, *kept] if head is not None else []) + outputs)


def _write_outputs(args: argparse.Namespace, record: dict[str, Any], outputs: list) -> None:
    """The head's outputs (all of them), then the tail's: the host reassembles the model's outputs."""
    final = codec.encode(outputs, "fp32")
    record["outputs_sha256"] = hashlib.sha256(final).hexdigest()
    if args.outputs_file:
        Path(args.outputs_file).write_bytes(final)
        record["outputs_file"] = args.outputs_file


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--jobs"]:
        return _jobs()
    return _one(parse_args(argv))


def _jobs() -> int:
    _portable_lib()  # once, before the first job
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            args = parse_args([str(a) for a in json.loads(line)])
        except (SystemExit, ValueError, TypeError):  # not a JSON list, or argparse refused it (stderr says why)
            print(json.dumps({"out": None, "status": "error", "error": "bad arguments"}), flush=True)
            continue
        rc = _one(args)
        print(json.dumps({"out": args.out, "status": "ok" if rc == 0 else "error"}), flush=True)
    return 0


def _one(args: argparse.Namespace) -> int:
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "status": "ok", "error": None, "head": args.head,
        "server": args.server, "name": args.name, "encoding": args.encoding,
        "reply_encoding": args.reply_encoding, "warmup": args.warmup, "iterations": [],
        "bytes_up": None, "bytes_down": None, "payload_bytes_up": None, "payload_bytes_down": None,
        "head_outputs_count": None, "outputs_sha256": None, "outputs_file": None, "tail_outputs_file": None,
        "server_info": None,
    }
    try:
        measure(args, record)
    except SplitError as exc:
        record["status"], record["error"] = "error", {"code": exc.code, "message": str(exc)}
    except Exception as exc:  # noqa: BLE001  (a record says what went wrong rather than a traceback)
        msg = str(exc).splitlines()[0] if str(exc) else ""
        record["status"], record["error"] = "error", {"code": "failed", "message": f"{type(exc).__name__}: {msg}"}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    if record["status"] != "ok":
        print(f"split_client: {record['error']['message']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
