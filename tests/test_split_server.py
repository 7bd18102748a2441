"""`edgeprobe serve` (the tail side of a split) against real processes on 127.0.0.1: TailClient from
the host, and `python -m edgeprobe_runner.split_client` running an ExecuTorch head end to end.

Tolerances. fp32 crosses the wire bit-exactly, so the tail's outputs must equal a local run within
1e-5 (only the server's own float ordering could differ). fp16 and int8 are lossy at the cut; two
checks keep the bound honest rather than tuned: (1) the server ran exactly what arrived: its
outputs equal the local tail run on ``decode(encode(act))`` within 1e-5; (2) the error against the
unsplit model is within the tail's Lipschitz bound times the actual activation error:
||tail(a') - tail(a)||_2 <= L ||a' - a||_2 with L = 3 ||W_conv||_2 (a 3x3 stride-1 conv: every input
element sits in at most 9 windows, so ||conv||_2 <= sqrt(9) ||W reshaped to (out, in*9)||_2)
x 1 (ReLU) x 1/sqrt(H*W) (global average pool) x ||W_linear||_2. The codec's own error is checked
loosely too (fp16: 2^-10 of the largest |activation|; int8: one step of max|act|/127).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

TOKEN = "split-s3cret"
MAX_BYTES = 256 << 10  # a tail (~40 KiB) and the full model (~50 KiB) fit; 1 MiB of activations does not
CUT = 4
ENCODINGS = ("fp32", "fp16", "int8")

@pytest.fixture(scope="module")
def codec_env():
    """(the codec, the environment for the subprocesses: no inherited tokens)."""
    from edgeprobe_runner import codec

    return codec, {k: v for k, v in os.environ.items()
                   if k not in ("EDGEPROBE_TOKEN", "EDGEPROBE_SERVE_TOKEN", "EDGEPROBE_SPLIT_TOKEN")}


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),  # head
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),  # tail
    ).eval()


@pytest.fixture(scope="module")
def split():
    model = _model()
    torch.manual_seed(1)
    x = torch.randn(1, 3, 32, 32)
    head, tail = model[:CUT], model[CUT:]
    with torch.no_grad():
        act = head(x)
        y = model(x)
    return {"model": model, "head": head, "tail": tail, "x": x, "act": act, "y": y,
            "tail_ep": torch.export.export(tail, (act,)), "full_ep": torch.export.export(model, (x,))}


def _lipschitz(tail: nn.Sequential, act: torch.Tensor) -> float:
    conv, lin = tail[0], tail[4]
    hw = act.shape[-1] * act.shape[-2]
    with torch.no_grad():
        return (3 * torch.linalg.matrix_norm(conv.weight.reshape(conv.out_channels, -1), ord=2).item()
                / math.sqrt(hw) * torch.linalg.matrix_norm(lin.weight, ord=2).item())


def _start_server(env: dict, *args: str) -> tuple[subprocess.Popen, dict]:
    code = f"import sys; from edgeprobe.split.server import main; sys.exit(main({list(args)!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        pytest.fail(f"edgeprobe serve did not start: {proc.stderr.read()}")
    return proc, json.loads(line)


@pytest.fixture(scope="module")
def server(codec_env):
    _, env = codec_env
    proc, info = _start_server(env, "--host", "127.0.0.1", "--port", "0", "--token", TOKEN, "--device", "cpu",
                               "--max-bytes", str(MAX_BYTES), "--timeout-s", "60", "--threads", "1")
    host, port = info["listening"].rsplit(":", 1)
    try:
        yield {"host": host, "port": int(port), "info": info, "proc": proc, "env": env}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture()
def client(server):
    from edgeprobe.split.server import TailClient

    c = TailClient(server["host"], server["port"], TOKEN, timeout_s=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def loaded(server, split):
    from edgeprobe.split.server import TailClient

    with TailClient(server["host"], server["port"], TOKEN, timeout_s=60) as c:
        r = c.load("tail", split["tail_ep"])
        assert r["ok"] and r["program_bytes"] < MAX_BYTES and r["device"] == "cpu"
        c.load("full", split["full_ep"])
    return split


def test_startup_line_and_info(server, client):
    info = server["info"]
    assert info["token"] == TOKEN and info["device"] == "cpu" and info["max_bytes"] == MAX_BYTES
    assert client.info["device_type"] == "cpu" and client.info["torch"] == torch.__version__
    assert client.server_info()["max_bytes"] == MAX_BYTES


def test_a_reply_without_handle_ms_is_none_not_a_stand_in(loaded, client, monkeypatch):
    """The server's handling time is what the link probe subtracts: one that a server does not
    report is None (and the probe refuses), never its decode + run + encode stood in for it."""
    from edgeprobe.errors import TransportError
    from edgeprobe.split.link import probe_link

    client.run("tail", [loaded["act"]])
    assert client.last["handle_ms"] is not None and client.last["handle_ms"] > 0  # the real server reports it
    once = client._once

    def without_handle_ms(header, payload=b""):
        reply, data, up, down = once(header, payload)
        return {k: v for k, v in reply.items() if k != "handle_ms"}, data, up, down

    monkeypatch.setattr(client, "_once", without_handle_ms)
    client.run("tail", [loaded["act"]])
    assert client.last["handle_ms"] is None
    try:
        with pytest.raises(TransportError, match="does not report handle_ms"):
            probe_link(client, "edgeprobe-probe-test")
    finally:
        client.unload("edgeprobe-probe-test")  # the module's other tests list the loaded programs


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_tail_over_tcp_matches_local(loaded, client, codec_env, encoding):
    codec, _ = codec_env
    act, tail, y = loaded["act"], loaded["tail"], loaded["y"]
    outputs, server_ms, wire_bytes = client.run("tail", [act], encoding)
    assert len(outputs) == 1 and outputs[0].shape == y.shape and outputs[0].dtype == torch.float32
    assert server_ms > 0 and client.last["round_trip_ms"] >= server_ms
    assert wire_bytes == client.last["bytes_up"] + client.last["bytes_down"] > client.last["payload_up"]
    got = outputs[0]
    if encoding == "fp32":
        torch.testing.assert_close(got, y, rtol=0, atol=1e-5)
        return
    arrived = codec.decode(codec.encode([act], encoding))[0]
    with torch.no_grad():
        torch.testing.assert_close(got, tail(arrived), rtol=0, atol=1e-5)  # ran exactly what arrived
    d_act = (arrived - act).abs().max().item()
    step = 2.0 ** -10 if encoding == "fp16" else 1 / 127
    assert d_act <= step * act.abs().max().item() * 1.001, "codec error beyond its own resolution"
    bound = _lipschitz(tail, act) * (arrived - act).norm().item() + 1e-5
    assert (got - y).norm().item() <= bound
    # smaller payloads than fp32: 2 bytes / 1 byte per element, plus a small header
    assert client.last["payload_up"] < act.numel() * (2.2 if encoding == "fp16" else 1.2)


def test_reply_encoding_can_be_asked(loaded, client):
    outputs, _, _ = client.run("tail", [loaded["act"]], "fp32", reply_encoding="fp16")
    torch.testing.assert_close(outputs[0], loaded["y"], rtol=2.0 ** -10, atol=1e-4)


def test_wrong_token_is_refused_and_closed(server):
    from edgeprobe.errors import TransportError
    from edgeprobe.split.server import TailClient
    from edgeprobe_runner.wire import recv_msg, send_msg

    with pytest.raises(TransportError, match="unauthorized: wrong token"):
        TailClient(server["host"], server["port"], "wrong-token")
    s = socket.create_connection((server["host"], server["port"]), timeout=10)
    try:
        assert recv_msg(s)["op"] == "challenge"  # the server speaks first
        send_msg(s, {"op": "load", "name": "x", "size": 0, "sha256": ""})  # no hello first
        reply = recv_msg(s)
        assert reply["ok"] is False and "unauthorized" in reply["error"] and reply["closed"] is True
        assert s.recv(1) == b""  # the server closed the connection
    finally:
        s.close()


def test_oversized_payload_refused_and_server_keeps_serving(loaded, server):
    from edgeprobe.errors import TransportError
    from edgeprobe.split.server import TailClient
    from edgeprobe_runner.wire import client_handshake, recv_msg, send_msg

    big = torch.randn(1, 16, 128, 128)  # 1 MiB of fp32 > the 256 KiB limit
    c = TailClient(server["host"], server["port"], TOKEN, timeout_s=30)
    with pytest.raises(TransportError, match=r"over this server's 262144-byte limit \(--max-bytes\)"):
        c.run("tail", [big], "fp32")
    c.close()
    # only the header: refused before any payload is read
    s = socket.create_connection((server["host"], server["port"]), timeout=10)
    try:
        client_handshake(s, TOKEN, "split", "test")
        send_msg(s, {"op": "load", "name": "huge", "size": 10 ** 12, "sha256": "0" * 64})
        reply = recv_msg(s)
        assert reply["ok"] is False and "over this server's" in reply["error"] and reply["closed"]
    finally:
        s.close()
    with TailClient(server["host"], server["port"], TOKEN) as c2:  # still serving, tail still loaded
        out, _, _ = c2.run("tail", [loaded["act"]], "fp32")
        torch.testing.assert_close(out[0], loaded["y"], rtol=0, atol=1e-5)
        assert "huge" not in c2.server_info()["programs"]


def test_errors_are_replies_and_the_connection_stays_usable(loaded, client):
    from edgeprobe.errors import TransportError

    with pytest.raises(TransportError, match=r"no tail program named 'nope' on this server \(loaded: \['full', 'tail'\]\)"):
        client.run("nope", [loaded["act"]], "fp32")
    with pytest.raises(TransportError, match=r"tail 'tail' failed on inputs \[\(1, 3, 32, 32\) float32\]"):
        client.run("tail", [loaded["x"]], "fp32")  # wrong shape for the tail
    with pytest.raises(TransportError, match="encoding must be one of"):
        client._request({"op": "run", "name": "tail", "encoding": "bf9"}, b"\0" * 8)
    with pytest.raises(TransportError, match="sha256 of the received program"):
        client._request({"op": "load", "name": "bad", "sha256": "0" * 64}, b"not a program")
    import hashlib

    junk = b"PK\x03\x04 definitely not a zip"
    with pytest.raises(TransportError, match="cannot load 'junk' with torch.export.load"):
        client._request({"op": "load", "name": "junk", "sha256": hashlib.sha256(junk).hexdigest()}, junk)
    with pytest.raises(TransportError, match="unknown op 'rm'"):
        client._request({"op": "rm", "path": "/"})
    out, _, _ = client.run("tail", [loaded["act"]], "fp32")  # same connection, still in sync
    torch.testing.assert_close(out[0], loaded["y"], rtol=0, atol=1e-5)
    assert sorted(client.server_info()["programs"]) == ["full", "tail"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_cuda_without_cuda_is_a_clear_error(codec_env):
    _, env = codec_env
    code = "import sys; from edgeprobe.split.server import main; sys.exit(main(['--device', 'cuda']))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "torch.cuda.is_available() is False" in p.stderr and "Traceback" not in p.stderr


# -- end to end: ExecuTorch head on the "device", tail on the server ---------------------------


@pytest.fixture(scope="module")
def head_pte(loaded, tmp_path_factory):
    from edgeprobe.lower import lower
    from edgeprobe.models import ModelSpec

    art = lower(ModelSpec(ref="split-head", example_inputs=(loaded["x"],), module=loaded["head"]),
                out_dir=tmp_path_factory.mktemp("head") / "art", use_cache=False)
    return art.model_path


def _split_client(server, codec, tmp_path, x, *, head=None, name="tail", encoding="fp32", iterations=5):
    inputs = tmp_path / "inputs.bin"
    inputs.write_bytes(codec.encode([x], "fp32"))
    out, outputs = tmp_path / f"result-{encoding}.json", tmp_path / f"outputs-{encoding}.bin"
    argv = [sys.executable, "-m", "edgeprobe_runner.split_client", "--server", f"{server['host']}:{server['port']}",
            "--name", name, "--encoding", encoding, "--inputs", str(inputs),
            "--iterations", str(iterations), "--warmup", "2", "--out", str(out), "--outputs-file", str(outputs)]
    if head is not None:
        argv += ["--head", str(head)]
    p = subprocess.run(argv, capture_output=True, text=True, env={**server["env"], "EDGEPROBE_SPLIT_TOKEN": TOKEN},
                       timeout=300)
    record = json.loads(out.read_text())
    assert p.returncode == 0, (record.get("error"), p.stderr[-2000:])
    # the outputs file holds the head's outputs, then the tail's: keep the tail's (the model's here)
    return record, codec.decode(outputs.read_bytes())[record.get("head_outputs_count", 0):]


def _check_record(record, encoding, iterations=5, head=True):
    import hashlib

    assert record["schema_version"] == 1 and record["status"] == "ok" and record["encoding"] == encoding
    its = record["iterations"]
    assert len(its) == iterations
    for it in its:
        # cloud only runs no head: its head_ms is null (nothing measured), never 0
        assert (it["head_ms"] is not None) == head and (not head or it["head_ms"] > 0)
        head_ms = it["head_ms"] if head else 0.0
        assert it["e2e_ms"] >= head_ms + it["server_ms"]
        assert it["e2e_ms"] >= head_ms + it["encode_ms"] + it["round_trip_ms"] + it["decode_ms"] - 1e-6
        assert it["round_trip_ms"] >= it["server_ms"] + it["server_decode_ms"] + it["server_encode_ms"]
        assert it["server_ms"] > 0
        assert it["bytes_up"] == record["bytes_up"] > record["payload_bytes_up"]
    assert record["outputs_sha256"] == hashlib.sha256(Path(record["outputs_file"]).read_bytes()).hexdigest()


def test_end_to_end_executorch_head_and_served_tail(loaded, server, head_pte, codec_env, tmp_path):
    from executorch.runtime import Runtime

    codec, _ = codec_env
    x, y, tail = loaded["x"], loaded["y"], loaded["tail"]
    pte_act = Runtime.get().load_program(str(head_pte)).load_method("forward").execute([x])[0].clone()
    assert (pte_act - loaded["act"]).abs().max().item() < 1e-4  # the lowered head itself
    L = _lipschitz(tail, loaded["act"])
    for encoding in ENCODINGS:
        record, outputs = _split_client(server, codec, tmp_path, x, head=head_pte, encoding=encoding)
        _check_record(record, encoding)
        arrived = codec.decode(codec.encode([pte_act], encoding))[0]
        bound = L * (arrived - loaded["act"]).norm().item() + 1e-5
        assert (outputs[0] - y).norm().item() <= bound, encoding
        if encoding == "fp32":
            torch.testing.assert_close(outputs[0], y, rtol=0, atol=1e-4)
        smaller = {"fp32": 1.0, "fp16": 0.55, "int8": 0.3}[encoding]
        assert record["payload_bytes_up"] <= loaded["act"].numel() * 4 * smaller + 1024


def test_device_only_records_null_for_what_it_did_not_do(loaded, head_pte, codec_env, tmp_path):
    """--server none: the head is the whole run; nothing was encoded, sent or served, so those
    fields are null (as the native runner writes them), never 0."""
    codec, _ = codec_env
    inputs, out = tmp_path / "inputs.bin", tmp_path / "device-only.json"
    inputs.write_bytes(codec.encode([loaded["x"]], "fp32"))
    p = subprocess.run([sys.executable, "-m", "edgeprobe_runner.split_client", "--server", "none", "--head",
                        str(head_pte), "--inputs", str(inputs), "--iterations", "3", "--warmup", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    record = json.loads(out.read_text())
    assert p.returncode == 0 and record["status"] == "ok", (record.get("error"), p.stderr[-2000:])
    assert len(record["iterations"]) == 3
    for it in record["iterations"]:
        assert it["head_ms"] > 0 and it["e2e_ms"] == it["head_ms"]
        assert [it[k] for k in ("encode_ms", "round_trip_ms", "server_ms", "network_ms", "decode_ms")] == [None] * 5


def test_cloud_only_sends_the_inputs(loaded, server, codec_env, tmp_path):
    codec, _ = codec_env
    record, outputs = _split_client(server, codec, tmp_path, loaded["x"], name="full", iterations=3)
    _check_record(record, "fp32", iterations=3, head=False)
    torch.testing.assert_close(outputs[0], loaded["y"], rtol=0, atol=1e-5)
    assert record["payload_bytes_up"] >= loaded["x"].numel() * 4


def test_split_client_reports_a_refusal_in_its_record(loaded, server, codec_env, tmp_path):
    codec, _ = codec_env
    inputs = tmp_path / "inputs.bin"
    inputs.write_bytes(codec.encode([loaded["act"]], "fp32"))
    out = tmp_path / "r.json"
    bad = tmp_path / "token"
    bad.write_text("bad\n")
    p = subprocess.run([sys.executable, "-m", "edgeprobe_runner.split_client", "--server",
                        f"{server['host']}:{server['port']}", "--token-file", str(bad), "--name", "tail", "--inputs",
                        str(inputs), "--iterations", "1", "--out", str(out)],
                       capture_output=True, text=True, env=server["env"], timeout=120)
    record = json.loads(out.read_text())
    assert p.returncode == 1 and record["status"] == "error" and record["error"]["code"] == "refused"
    assert "unauthorized" in record["error"]["message"] and "Traceback" not in p.stderr


def test_split_client_does_not_import_the_host_package(codec_env):
    _, env = codec_env
    code = "import sys, edgeprobe_runner.split_client; sys.exit('edgeprobe' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


def test_unload_frees_the_name_and_runs_report_their_handling_time(loaded, client, split):
    client.load("scratch", split["tail_ep"])
    out, _, _ = client.run("scratch", [loaded["act"]], "fp32")
    last = client.last
    # handle_ms: everything the server did for the request, which holds its three timed parts
    assert last["handle_ms"] >= last["server_ms"] + last["decode_ms"] + last["encode_ms"] - 1e-6
    assert last["client_encode_ms"] >= 0 and last["client_decode_ms"] >= 0
    assert "scratch" in client.server_info()["programs"]
    assert client.unload("scratch") is True
    assert "scratch" not in client.server_info()["programs"]
    assert client.unload("scratch") is False  # nothing by that name any more: said, not an error
    from edgeprobe.errors import TransportError

    with pytest.raises(TransportError, match="no tail program named 'scratch'"):
        client.run("scratch", [loaded["act"]], "fp32")


def test_client_reconnects_after_the_server_drops_an_idle_connection(codec_env):
    import time

    from edgeprobe.split.server import TailClient

    _, env = codec_env
    proc, info = _start_server(env, "--host", "127.0.0.1", "--port", "0", "--token", TOKEN, "--device", "cpu",
                               "--timeout-s", "0.5", "--threads", "1")
    host, port = info["listening"].rsplit(":", 1)
    try:
        with TailClient(host, int(port), TOKEN, timeout_s=30) as c:
            assert c.server_info()["programs"] == []
            time.sleep(1.5)  # the server closes the idle connection
            assert c.server_info()["programs"] == []  # sent again on a new connection
        from edgeprobe.errors import ConnectionLostError

        with TailClient(host, int(port), TOKEN, timeout_s=30, reconnects=0) as c:
            time.sleep(1.5)
            with pytest.raises(ConnectionLostError, match="connection lost during info"):
                c.server_info()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
