"""Split mode, both device halves (PROTOCOL.md "Split mode"): the native runner's ``--split-server``
and the Python ``edgeprobe_runner.split_client``, the same head (the tiny .pte, whole) and the same
inputs against one real ``edgeprobe serve`` on loopback (a tail that doubles the logits): the same
outputs, the same split record structure. Then the same bad server replies (a fake server speaking
the v2 handshake by the spec) through both: the same error code.

The two halves are two programs: the native one writes its runner record (the error is there) and
the split record at ``PATH.json``; the Python one writes one split record with ``status``/``error``
in it (and exits 1 on an error; the native runner exits 0 with an error record). The split record's
keys must be the native ones, plus those the Python client documents: ``PY_ONLY`` below.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import framing  # tests/ is on sys.path (rootdir conftest)

from .conftest import RUNNERS, _native_binary, clean_env, require_native
from .test_runner_records import _kind, structure_diff

TOKEN = "conformance-split-token"
PY_ONLY = {"status", "error", "head", "outputs_sha256", "server_info"}  # split_client.py's docstring


@pytest.fixture(scope="module")
def split_files(tiny_pte, tmp_path_factory):
    from edgeprobe_runner import codec
    from edgeprobe_runner import vectors as epv
    import torch

    d = tmp_path_factory.mktemp("conformance-split")
    token = d / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    (ts,) = epv.read(str(tiny_pte.vectors_path))
    x = torch.frombuffer(bytearray(ts.inputs[0].data), dtype=torch.float32).reshape(ts.inputs[0].shape)
    inputs = d / "inputs.bin"
    inputs.write_bytes(codec.encode([x], "fp32"))  # the python client's form of the vectors' inputs
    return {"dir": d, "token": token, "inputs": inputs, "model": Path(tiny_pte.model_path),
            "vectors": Path(tiny_pte.vectors_path)}


@pytest.fixture(scope="module")
def serve(split_files):
    """`edgeprobe serve` on loopback with one tail loaded: ``double`` (x * 2 on the (1, 10) logits)."""
    import torch
    from edgeprobe.split.server import TailClient

    class Double(torch.nn.Module):
        def forward(self, x):
            return x * 2.0

    args = ["--host", "127.0.0.1", "--port", "0", "--token-file", str(split_files["token"]), "--device", "cpu",
            "--threads", "1", "--timeout-s", "60"]
    proc = subprocess.Popen([sys.executable, "-c", f"import sys; from edgeprobe.split.server import main; "
                             f"sys.exit(main({args!r}))"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env())
    try:
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=30)
            pytest.fail(f"edgeprobe serve did not start: {proc.stderr.read()[-2000:]}")
        port = int(json.loads(line)["listening"].rsplit(":", 1)[1])
        with TailClient("127.0.0.1", port, TOKEN, timeout_s=60) as c:
            assert c.load("double", torch.export.export(Double(), (torch.zeros(1, 10),)))["ok"]
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_split(runner: str, f: dict, out: Path, server: str, *, encoding: str = "fp32", iterations: int = 3,
              warmup: int = 1) -> dict:
    """One split through one device half; returns {exit, record (the split record or None), error,
    head (tensors), tail (tensors or None), stderr}."""
    from edgeprobe_runner import codec

    out.mkdir(parents=True, exist_ok=True)
    outs = out / "outputs.bin"
    if runner == "native":
        argv = [str(require_native()), "--model", f["model"], "--vectors", f["vectors"], "--warmup", warmup,
                "--iterations", iterations, "--output", out / "record.json", "--split-server", server,
                "--split-outputs", outs, "--split-timeout-s", 20]
        if server != "none":
            argv += ["--split-name", "double", "--split-encoding", encoding, "--split-token-file", f["token"]]
    else:
        argv = [sys.executable, "-m", "edgeprobe_runner.split_client", "--head", f["model"], "--server", server,
                "--inputs", f["inputs"], "--iterations", iterations, "--warmup", warmup, "--out", out / "split.json",
                "--outputs-file", outs, "--timeout-s", 20]
        if server != "none":
            argv += ["--name", "double", "--encoding", encoding, "--token-file", f["token"]]
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, env=clean_env())
    res: dict[str, Any] = {"exit": p.returncode, "stderr": p.stderr, "record": None, "error": None,
                           "head": None, "tail": None}
    if runner == "native":
        rec_path = out / "record.json"
        assert rec_path.exists(), (p.returncode, p.stderr[-2000:])
        rec = json.loads(rec_path.read_text())
        res["runner_record"] = rec
        res["error"] = rec["error"]
        split_json = Path(str(outs) + ".json")
        if rec["status"] == "ok":
            res["record"] = json.loads(split_json.read_text())
            res["head"] = codec.decode(outs.read_bytes())
            tail = Path(str(outs) + ".tail")
            res["tail"] = codec.decode(tail.read_bytes()) if tail.exists() else None
    else:
        rec = json.loads((out / "split.json").read_text())
        res["error"] = rec["error"]
        if rec["status"] == "ok":
            res["record"] = rec
            every = codec.decode(outs.read_bytes())  # the head's outputs, then the tail's
            k = rec["head_outputs_count"]
            res["head"], res["tail"] = every[:k], (every[k:] if server != "none" else None)
    return res


def _both(run: Callable[[str], dict]) -> dict[str, dict]:
    """``run(runner)`` for both runners at once (two threads: two processes)."""
    from concurrent.futures import ThreadPoolExecutor

    require_native()
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {r: pool.submit(run, r) for r in RUNNERS}
        return {r: f.result() for r, f in futures.items()}


def _same_split_records(n: dict, p: dict) -> None:
    nk, pk = set(n), set(p)
    assert nk <= pk, f"split record keys only the native runner writes: {sorted(nk - pk)}"
    assert pk - nk <= PY_ONLY, f"split record keys only the python client writes (undocumented): {sorted(pk - nk - PY_ONLY)}"
    diff = structure_diff({k: n[k] for k in nk}, {k: p[k] for k in nk})
    assert not diff, "native (first) vs python (second) split record:\n" + "\n".join(diff)
    assert len(n["iterations"]) == len(p["iterations"])
    for a, b in zip(n["iterations"], p["iterations"]):  # every iteration, every key, the same kind of value
        assert set(a) == set(b) and {k: _kind(v) for k, v in a.items()} == {k: _kind(v) for k, v in b.items()}, (a, b)
    for k in ("schema_version", "server", "encoding", "reply_encoding", "warmup", "head_outputs_count",
              "payload_bytes_up", "payload_bytes_down"):
        assert n[k] == p[k], (k, n[k], p[k])


@pytest.mark.parametrize("encoding", ["fp32", "fp16", "int8"])
def test_same_split_through_a_real_server(serve, split_files, tmp_path, encoding):
    """The same head and inputs, one `edgeprobe serve`: the same head and tail outputs (the native
    runner's hand-written codec encodes what the Python codec does, and decodes the reply alike)."""
    import torch

    got = _both(lambda r: run_split(r, split_files, tmp_path / r, f"127.0.0.1:{serve}", encoding=encoding))
    for r, res in got.items():
        assert res["record"] is not None, (r, res["error"], res["stderr"][-1500:])
        assert len(res["record"]["iterations"]) == 3
    n, p = got["native"], got["python"]
    _same_split_records(n["record"], p["record"])
    assert n["record"]["name"] == p["record"]["name"] == "double"
    for res in (n, p):  # the run request: 4-byte length + JSON header (its whitespace is the writer's) + the frame
        rec = res["record"]
        assert rec["payload_bytes_up"] + 4 + 60 < rec["bytes_up"] < rec["payload_bytes_up"] + 4 + 200, rec
    for a, b in zip(n["head"], p["head"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert n["tail"] is not None and p["tail"] is not None
    for a, b in zip(n["tail"], p["tail"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and the tail is the server's double of what was sent
    from edgeprobe_runner import codec

    sent = codec.decode(codec.encode(list(n["head"]), encoding))
    torch.testing.assert_close(n["tail"][0], sent[0] * 2, rtol=1e-5, atol=1e-5)


def test_same_device_only_split(split_files, tmp_path):
    """--split-server none / --server none: the head is the whole run; the same nulls for what was not done."""
    import torch

    got = _both(lambda r: run_split(r, split_files, tmp_path / r, "none"))
    for r, res in got.items():
        assert res["record"] is not None, (r, res["error"], res["stderr"][-1500:])
    n, p = got["native"]["record"], got["python"]["record"]
    _same_split_records(n, p)
    for it in (*n["iterations"], *p["iterations"]):
        assert it["head_ms"] > 0 and it["e2e_ms"] > 0 and it["bytes_up"] == it["bytes_down"] == 0
        assert all(it[k] is None for k in ("encode_ms", "round_trip_ms", "server_ms", "server_decode_ms",
                                           "server_encode_ms", "server_handle_ms", "network_ms", "decode_ms")), it
    for a, b in zip(got["native"]["head"], got["python"]["head"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- bad server replies


_send, _recv_exact, _recv = framing.send, framing.recv_exact, framing.recv


def _mac(token: str, role: str, sn: str, cn: str, service: str) -> str:
    return hmac.new(token.encode(), f"edgeprobe-auth-v1|{role}|{service}|{sn}|{cn}".encode(), hashlib.sha256).hexdigest()


class FakeSplitServer:
    """Loopback, one connection at a time, the v2 handshake written from the spec; run replies from
    ``reply(frame) -> raw bytes to send`` (None: a good reply, the head's outputs doubled)."""

    def __init__(self, *, token: str = TOKEN, service: str = "split", prove: bool = True,
                 reply: Optional[Callable[[bytes], bytes]] = None) -> None:
        self.token, self.service, self.prove, self.reply = token, service, prove, reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    self._one(conn)
                except (EOFError, OSError, ValueError, KeyError):
                    pass

    def _one(self, conn) -> None:
        from edgeprobe_runner import codec

        conn.settimeout(30)
        sn = os.urandom(32).hex()
        _send(conn, {"op": "challenge", "auth": "hmac-sha256", "service": self.service, "nonce": sn})
        hello = _recv(conn)
        cn = hello.get("nonce", "")
        if hello.get("mac") != _mac(self.token, "client", sn, cn, self.service):
            _send(conn, {"ok": False, "closed": True, "error": "unauthorized: wrong token"})
            return
        _send(conn, {"ok": True, "mac": _mac(self.token, "server", sn, cn, self.service) if self.prove else "0" * 64,
                     "info": {"device": "cpu"}})
        while True:
            req = _recv(conn)
            frame = _recv_exact(conn, req["size"])
            if self.reply is None:
                payload = codec.encode([t * 2 for t in codec.decode(frame)], "fp32")
                _send(conn, {"ok": True, "size": len(payload), "server_ms": 0.25, "decode_ms": 0.01,
                             "encode_ms": 0.02}, payload)
            else:
                conn.sendall(self.reply(frame))
                if self.reply is not None:
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):  # until the client hangs up
                        pass
                    return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.sock.close()


def _framed(header: Any, payload: bytes = b"") -> bytes:
    data = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">I", len(data)) + data + payload


def _good(frame: bytes, **fields) -> bytes:
    from edgeprobe_runner import codec

    payload = codec.encode([t * 2 for t in codec.decode(frame)], "fp32")
    header = {"ok": True, "size": len(payload), "server_ms": 0.25, "decode_ms": 0.01, "encode_ms": 0.02, **fields}
    header = {k: v for k, v in header.items() if v is not None}
    return _framed(header, payload if header.get("size") == len(payload) else b"")


BAD_REPLIES: dict[str, tuple[dict, str]] = {
    # name: (FakeSplitServer arguments, the error code both must give)
    "no server_ms": ({"reply": lambda f: _good(f, server_ms=None)}, "split_protocol"),
    "decode_ms not a number": ({"reply": lambda f: _good(f, decode_ms="fast")}, "split_protocol"),
    "size -1": ({"reply": lambda f: _good(f, size=-1)}, "split_protocol"),
    "size 2.5": ({"reply": lambda f: _good(f, size=2.5)}, "split_protocol"),
    "size over 2^31": ({"reply": lambda f: _good(f, size=2**31 + 1)}, "split_protocol"),
    "size 1e18": ({"reply": lambda f: _good(f, size=1e18)}, "split_protocol"),
    "header over 1 MiB": ({"reply": lambda f: struct.pack(">I", (1 << 20) + 1) + b"{" * 4096}, "split_protocol"),
    "header not JSON": ({"reply": lambda f: _framed(b'{"ok": true, "size": ')}, "split_protocol"),
    "header a JSON list": ({"reply": lambda f: _framed(b"[1, 2]")}, "split_protocol"),
    "reply frame bad magic": ({"reply": lambda f: _framed({"ok": True, "size": 16, "server_ms": 0.1, "decode_ms": 0,
                                                            "encode_ms": 0}, b"XXXX" + b"\0" * 12)}, "split_protocol"),
    "reply frame truncated": ({"reply": lambda f: _framed({"ok": True, "size": 12, "server_ms": 0.1, "decode_ms": 0,
                                                            "encode_ms": 0}, b"EPW1" + struct.pack("<I", 400) + b"{}{}")},
                              "split_protocol"),
    "server refuses the run": ({"reply": lambda f: _framed({"ok": False, "error": "no tail named 'double'"})},
                               "server_error"),
    "closed mid-payload": ({"reply": lambda f: _framed({"ok": True, "size": 1000, "server_ms": 0.1, "decode_ms": 0,
                                                         "encode_ms": 0}, b"EPW1")}, "connection_lost"),
    "wrong token": ({"token": "another-token"}, "refused"),
    "impostor server": ({"prove": False}, "unauthenticated_server"),
    "a runner server": ({"service": "runner"}, "split_protocol"),
}

# native-side discrepancies against PROTOCOL.md: case name -> reason (xfail, strict)
NATIVE_SPLIT_XFAIL: dict[str, str] = {}


def _bad_run(f: dict, out: Path, name: str, runner: str) -> dict:
    srv = FakeSplitServer(**BAD_REPLIES[name][0])
    try:
        return run_split(runner, f, out, f"127.0.0.1:{srv.port}", iterations=1, warmup=0)
    finally:
        srv.close()


@pytest.fixture(scope="module")
def bad_runs(split_files, tmp_path_factory):
    """Every (bad reply, runner) once, in parallel (each against its own fake server), at the first request."""
    from concurrent.futures import ThreadPoolExecutor

    out = tmp_path_factory.mktemp("bad-replies")
    runners = [r for r in RUNNERS if r == "python" or _native_binary() is not None]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {(name, r): pool.submit(_bad_run, split_files, out / f"{i}-{r}", name, r)
                   for i, name in enumerate(BAD_REPLIES) for r in runners}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("name", list(BAD_REPLIES))
def test_bad_server_reply(bad_runs, name, runner, request):
    """One bad reply, one runner: the error code PROTOCOL.md gives for it, in a one-line message."""
    if runner == "native":
        require_native()
        if name in NATIVE_SPLIT_XFAIL:
            request.applymarker(pytest.mark.xfail(strict=True, reason=NATIVE_SPLIT_XFAIL[name]))
    code = BAD_REPLIES[name][1]
    res = bad_runs[(name, runner)]
    assert res["error"] is not None, (res["exit"], res["stderr"][-1500:])
    msg = res["error"]["message"]
    assert isinstance(msg, str) and msg and "\n" not in msg, msg
    assert res["error"]["code"] == code, res["error"]
    assert TOKEN not in msg
    # the native runner: a failed measurement is an error record and exit 0; the python client: exit 1
    assert res["exit"] == (0 if runner == "native" else 1), (res["exit"], res["stderr"][-1500:])


def test_the_fake_server_is_good_by_default(split_files, tmp_path):
    """The fake server's good reply works for both (so a bad-reply failure is the reply's)."""
    srv = FakeSplitServer()
    try:
        for r in RUNNERS:
            res = run_split(r, split_files, tmp_path / r, f"127.0.0.1:{srv.port}", iterations=1, warmup=0)
            assert res["record"] is not None, (r, res["error"], res["stderr"][-1500:])
    finally:
        srv.close()


@pytest.mark.parametrize("encoding", ["fp16", "int8"])
def test_both_accept_a_reply_frame_in_any_encoding(split_files, tmp_path, encoding):
    """The codec's decode side: a reply frame encoded fp16 / int8 by the Python codec. The native
    runner decodes and checks it (it exposes no decoded values: ``PATH.tail`` is the frame as it
    came, so the check is that it accepts the frame and keeps it byte for byte); the Python client's
    outputs are the codec's decode of it."""
    import torch
    from edgeprobe_runner import codec

    frames: list[bytes] = []

    def reply(frame: bytes) -> bytes:
        payload = codec.encode([t * 2 for t in codec.decode(frame)], encoding)
        frames.append(payload)
        return _framed({"ok": True, "size": len(payload), "server_ms": 0.2, "decode_ms": 0.01, "encode_ms": 0.01,
                        "handle_ms": 0.3}, payload)

    srv = FakeSplitServer(reply=reply)
    try:
        got = {r: run_split(r, split_files, tmp_path / r, f"127.0.0.1:{srv.port}", iterations=1, warmup=0)
               for r in RUNNERS}
    finally:
        srv.close()
    for r, res in got.items():
        assert res["record"] is not None, (r, res["error"], res["stderr"][-1500:])
        assert res["record"]["iterations"][0]["server_handle_ms"] == 0.3, r
    assert len(frames) == 2 and frames[0] == frames[1], "both sent the same head outputs, fp32"
    native_tail = Path(got["native"]["record"]["tail_outputs_file"]).read_bytes()
    assert native_tail == frames[0]
    assert Path(got["python"]["record"]["tail_outputs_file"]).read_bytes() == frames[1]
    for a, b in zip(got["python"]["tail"], codec.decode(frames[1]), strict=True):
        torch.testing.assert_close(a.to(b.dtype), b, rtol=0, atol=0)
