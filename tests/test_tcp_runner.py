"""TCP transport against a real `edgeprobe runner serve` process on loopback, found via zeroconf."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

import edgeprobe
from edgeprobe.devices.tcp import TcpTransport, discover
from edgeprobe.errors import TransportError
from edgeprobe_runner.wire import client_handshake, recv_msg, send_msg

TOKEN = "s3cret-token"


@pytest.fixture()
def runner_server(tmp_path, native_runner):
    name = f"ep-test-{os.getpid()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeprobe", "runner", "serve", "--host", "127.0.0.1", "--port", "0",
         "--token", TOKEN, "--name", name, "--workdir", str(tmp_path / "device"),
         "--native-runner", str(native_runner), "--max-upload-bytes", str(50 << 20)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        info = json.loads(line)
        host, port = info["listening"].rsplit(":", 1)
        yield {"name": name, "host": host, "port": int(port), "workdir": tmp_path / "device", "proc": proc}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_bench_over_tcp_with_token(runner_server, tiny_pte):
    dev = f"tcp:127.0.0.1:{runner_server['port']}"
    r = edgeprobe.bench(tiny_pte, device=dev, token=TOKEN, iterations=4, warmup=1)
    assert r.ok, r.run.error
    assert r.device.transport == "tcp" and r.run.runner.flavor == "native"
    assert r.run.verification.passed and len(r.run.timing.iteration_ns) == 4
    p = edgeprobe.bench(tiny_pte, device=dev, token=TOKEN, runner="python", iterations=2)
    assert p.ok and p.run.runner.flavor == "python"


def test_token_is_required_and_checked(runner_server, tiny_pte, monkeypatch):
    monkeypatch.delenv("EDGEPROBE_TOKEN", raising=False)
    dev = f"tcp:127.0.0.1:{runner_server['port']}"
    with pytest.raises(TransportError, match="needs the runner's token"):
        edgeprobe.bench(tiny_pte, device=dev)
    with pytest.raises(TransportError, match="unauthorized"):
        edgeprobe.bench(tiny_pte, device=dev, token="wrong")
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "bench", str(tiny_pte.dir), "--device", dev],
                       capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "EDGEPROBE_TOKEN"})
    assert p.returncode == 2 and "token" in p.stderr and "Traceback" not in p.stderr


def test_discovered_over_zeroconf_and_benched_by_name(runner_server, tiny_pte, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_ZEROCONF_INTERFACES", "127.0.0.1")
    found = {f["name"]: f for f in discover(timeout_s=2.0, interfaces=["127.0.0.1"])}
    me = found[runner_server["name"]]
    assert me["port"] == str(runner_server["port"]) and "native" in me["runtimes"]
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "devices"], capture_output=True, text=True)
    assert p.returncode == 0 and runner_server["name"] in p.stdout
    r = edgeprobe.bench(tiny_pte, device=runner_server["name"], token=TOKEN, iterations=2)
    assert r.ok, r.run.error


def _raw(port: int):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    client_handshake(s, TOKEN, "runner", f"127.0.0.1:{port}")
    return s


def test_uploads_are_confined_checked_and_limited(runner_server):
    port, work = runner_server["port"], runner_server["workdir"]
    t = TcpTransport("127.0.0.1", port, TOKEN)
    try:
        for bad in ("../escape.bin", "/etc/evil", "a/../../escape"):
            with pytest.raises(TransportError, match="work dir"):
                t.push(__file__, bad)
        with pytest.raises(TransportError, match="only the runners"):
            t.run(["/bin/sh", "-c", "echo pwned"], timeout_s=5)
        with pytest.raises(TransportError, match="inside the runner's work dir"):
            t.run(["@python", "--model", "x.pte", "--output", "../../etc/x"], timeout_s=5)
    finally:
        t.close()
    assert not (work.parent / "escape.bin").exists()

    s = _raw(port)  # wrong sha256: nothing is kept
    data = b"x" * 1000
    send_msg(s, {"op": "push", "path": "f.bin", "size": len(data), "sha256": "0" * 64}, data)
    reply = recv_msg(s)
    assert not reply["ok"] and "sha256" in reply["error"]
    assert not (work / "f.bin").exists() and not list(work.glob(".f.bin.part-*"))

    s = _raw(port)  # over the size limit: refused before any byte is stored
    send_msg(s, {"op": "push", "path": "big.bin", "size": 51 << 20, "sha256": "0" * 64})
    reply = recv_msg(s)
    assert not reply["ok"] and "limit" in reply["error"]

    s = _raw(port)  # connection dropped mid-upload: no file under the final name
    send_msg(s, {"op": "push", "path": "half.bin", "size": 1 << 20, "sha256": hashlib.sha256(b"").hexdigest()},
             b"y" * 1000)
    s.close()
    t = TcpTransport("127.0.0.1", port, TOKEN)  # server still serves
    t.close()
    assert not (work / "half.bin").exists()
