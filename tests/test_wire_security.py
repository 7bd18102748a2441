"""Adversarial clients and protocol fuzz against both TCP servers (`edgeprobe runner serve`:
RunnerServer; `edgeprobe serve`: TailServer), real sockets on loopback, servers in threads.

Issue 11: finding 7 (argv built from a structured request), 8 (push to "."), 9 (challenge-response:
the token never crosses the wire; a server must prove it holds it), 10 (connection cap, auth
deadline, idle timeout, payload limits and budget, streaming, disk quota). Each refusal is one line
and comes within its deadline while the server goes on serving a real client.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeprobe_runner import wire
from edgeprobe_runner.server import RUN_ARGS, RunnerServer, build_argv, request_from_argv
from edgeprobe_runner.wire import AuthError, ProtocolError, client_handshake, encode_msg, recv_msg, send_msg

TOKEN = "runner-token-0123456789"
STOKEN = "serve-token-9876543210"
ECHO = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]  # the 'runner': its argv back
DEADLINE_S = 1.5


@contextlib.contextmanager
def serving(srv):
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _runner(tmp_path: Path, **kw) -> RunnerServer:
    limits = dict(name="t", max_connections=8, max_preauth_per_address=4, auth_deadline_s=DEADLINE_S, idle_timeout_s=3.0,
                  max_upload_bytes=1 << 20, max_inflight_bytes=3 << 19, max_disk_bytes=3 << 20, python_runner=ECHO)
    limits.update(kw)
    return RunnerServer(("127.0.0.1", 0), token=TOKEN, workdir=tmp_path / "work", **limits)


def _tail(**kw):
    import torch

    from edgeprobe.split.server import TailServer

    limits = dict(max_bytes=1 << 20, timeout_s=3.0, max_inflight_bytes=3 << 19, max_connections=8,
                  max_preauth_per_address=4, auth_deadline_s=DEADLINE_S)
    limits.update(kw)
    return TailServer(("127.0.0.1", 0), token=STOKEN, device=torch.device("cpu"), **limits)


SERVERS = {"runner": (_runner, TOKEN), "split": (lambda _tmp, **kw: _tail(**kw), STOKEN)}


@pytest.fixture(params=sorted(SERVERS))
def any_server(request, tmp_path):
    make, token = SERVERS[request.param]
    with serving(make(tmp_path)) as srv:
        yield srv, token


def _connect(port: int, source: str = "127.0.0.1", timeout_s: float = 10.0) -> socket.socket:
    s = socket.socket()
    s.settimeout(timeout_s)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def _authed(srv, token: str, source: str = "127.0.0.1") -> socket.socket:
    s = _connect(srv.port, source)
    client_handshake(s, token, srv.service, "test")
    return s


def _works(srv, token: str) -> None:
    """A real client is served: authenticate and get info."""
    with _authed(srv, token) as s:
        send_msg(s, {"op": "info"})
        reply = recv_msg(s)
        assert reply["ok"] is True and reply["info"]


def _one_line_error(reply: dict) -> str:
    assert reply["ok"] is False and isinstance(reply["error"], str) and reply["error"]
    assert "\n" not in reply["error"], reply["error"]
    return reply["error"]


# -- finding 9: challenge-response ---------------------------------------------------------------


def test_handshake_proves_the_token_both_ways_and_never_sends_it(any_server):
    srv, token = any_server
    s = _connect(srv.port)
    challenge = recv_msg(s)
    assert challenge["op"] == "challenge" and challenge["auth"] == "hmac-sha256" and challenge["service"] == srv.service
    cn = "ab" * 32
    send_msg(s, {"op": "hello", "nonce": cn, "mac": wire.auth_mac(token, "client", srv.service, challenge["nonce"], cn)})
    ok = recv_msg(s)
    assert ok["ok"] is True and ok["mac"] == wire.auth_mac(token, "server", srv.service, challenge["nonce"], cn)
    s.close()
    with pytest.raises(AuthError, match="unauthorized: wrong token"):
        client_handshake(_connect(srv.port), "not-the-token", srv.service, "test")
    other = "split" if srv.service == "runner" else "runner"  # a client of the other service stops at the challenge
    with pytest.raises(AuthError, match=f"is an edgeprobe '{srv.service}' server, not the '{other}' one"):
        client_handshake(_connect(srv.port), token, other, "test")
    _works(srv, token)


class _Rogue:
    """A listener that plays an edgeprobe server without the token: challenges, accepts any hello,
    answers ok with a made-up MAC, and records every byte clients send."""

    def __init__(self, service: str = "runner") -> None:
        self.service, self.received = service, bytearray()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2.0)
                try:
                    send_msg(conn, {"op": "challenge", "auth": "hmac-sha256", "service": self.service,
                                    "nonce": wire.new_nonce()})
                    (n,) = struct.unpack(">I", wire.recv_exact(conn, 4))
                    self.received += wire.recv_exact(conn, n)
                    send_msg(conn, {"ok": True, "mac": "0" * 64, "info": {"name": "rogue", "runtimes": "native,python"}})
                    while True:  # anything sent after a failed proof would land here
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        self.received += chunk
                except (OSError, ProtocolError):
                    pass

    def close(self) -> None:
        self.sock.close()


def test_a_server_that_cannot_prove_the_token_is_not_talked_to():
    from edgeprobe.devices.discovery import _tcp_health
    from edgeprobe.devices.tcp import TcpTransport
    from edgeprobe.errors import TransportError
    from edgeprobe.split.server import TailClient

    rogue = _Rogue()
    try:
        with pytest.raises(TransportError, match="did not prove it holds the token; not talking to it"):
            TcpTransport("127.0.0.1", rogue.port, TOKEN, timeout_s=5)
        health = _tcp_health("127.0.0.1", rogue.port, TOKEN, 5.0)  # `edgeprobe devices` on a LAN advertiser
        assert health.startswith("refused:") and "did not prove" in health
        time.sleep(0.2)
        hellos = bytes(rogue.received)
        assert hellos.count(b'"op": "hello"') == 2 and b'"op": "info"' not in hellos  # nothing after the hello
        assert TOKEN.encode() not in hellos and TOKEN.encode().hex().encode() not in hellos
    finally:
        rogue.close()
    rogue = _Rogue("split")
    try:
        with pytest.raises(TransportError, match="did not prove it holds the token"):
            TailClient("127.0.0.1", rogue.port, STOKEN, timeout_s=5)
        time.sleep(0.2)
        assert STOKEN.encode() not in rogue.received and b'"op": "load"' not in rogue.received
    finally:
        rogue.close()


class _Proxy:
    """A recording TCP proxy: every byte each way, for checking what a client puts on the wire."""

    def __init__(self, target_port: int) -> None:
        self.target, self.up, self.down = target_port, bytearray(), bytearray()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(c, s, self.up), daemon=True).start()
            threading.Thread(target=self._pump, args=(s, c, self.down), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket, log: bytearray) -> None:
        try:
            while True:
                chunk = a.recv(65536)
                if not chunk:
                    break
                log += chunk
                b.sendall(chunk)
        except OSError:
            pass
        finally:
            for x in (a, b):
                with contextlib.suppress(OSError):
                    x.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


def _no_token(token: str, *logs: bytes) -> None:
    for log in logs:
        assert log, "the proxy recorded nothing"
        assert token.encode() not in log and token.encode().hex().encode() not in log


def test_the_token_never_crosses_the_wire(tmp_path):
    import torch

    from edgeprobe.devices.tcp import TcpTransport
    from edgeprobe.split.server import TailClient
    from edgeprobe_runner import codec

    with serving(_runner(tmp_path)) as srv:
        proxy = _Proxy(srv.port)
        t = TcpTransport("127.0.0.1", proxy.port, TOKEN)
        f = tmp_path / "m.pte"
        f.write_bytes(os.urandom(200_000))
        t.push(f, "jobs/m.pte")
        t.pull("jobs/m.pte", tmp_path / "back.pte")
        assert (tmp_path / "back.pte").read_bytes() == f.read_bytes()
        r = t.run(["@python", "--model", "jobs/m.pte", "--warmup", "1"], timeout_s=30)
        assert r.exit_code == 0
        t.close()
        time.sleep(0.1)
        _no_token(TOKEN, proxy.up, proxy.down)
        proxy.close()
    with serving(_tail()) as srv:
        proxy = _Proxy(srv.port)

        class Double(torch.nn.Module):
            def forward(self, x):
                return x * 2

        x = torch.ones(1, 4)
        with TailClient("127.0.0.1", proxy.port, STOKEN) as c:
            c.load("full", torch.export.export(Double(), (x,)))
        inputs = tmp_path / "inputs.bin"
        inputs.write_bytes(codec.encode([x], "fp32"))
        env = {**os.environ, "EDGEPROBE_SPLIT_TOKEN": STOKEN}
        p = subprocess.run([sys.executable, "-m", "edgeprobe_runner.split_client", "--server", f"127.0.0.1:{proxy.port}",
                            "--name", "full", "--inputs", str(inputs), "--iterations", "2", "--warmup", "0",
                            "--out", str(tmp_path / "r.json")], capture_output=True, text=True, env=env, timeout=120)
        rec = json.loads((tmp_path / "r.json").read_text())
        assert p.returncode == 0 and rec["status"] == "ok", (rec["error"], p.stderr)
        time.sleep(0.1)
        _no_token(STOKEN, proxy.up, proxy.down)
        proxy.close()


def test_split_client_takes_no_token_on_its_command_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "edgeprobe_runner.split_client", "--server", "127.0.0.1:1", "--token",
                        "T", "--name", "n", "--inputs", "x", "--out", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "EDGEPROBE_SPLIT_TOKEN"})
    assert p.returncode == 2 and "--token" in p.stderr and not (tmp_path / "r.json").exists()


def test_open_device_by_name_uses_only_an_advertiser_that_proves_the_token(tmp_path, monkeypatch):
    """Two zeroconf advertisers of one name: a rogue one (tried first: its instance name sorts first)
    and the real runner. The device opened is the real one; the rogue got a MAC, never the token."""
    from zeroconf import ServiceInfo, Zeroconf

    from edgeprobe.devices import open_device
    from edgeprobe_runner.server import SERVICE_TYPE, advertise

    name = f"ep-wire-{os.getpid()}"
    monkeypatch.setenv("EDGEPROBE_ZEROCONF_INTERFACES", "127.0.0.1")
    rogue = _Rogue()
    with serving(_runner(tmp_path, name=name)) as srv:
        zc, _ = advertise(srv, "127.0.0.1")
        rzc = Zeroconf(interfaces=["127.0.0.1"])
        rzc.register_service(ServiceInfo(SERVICE_TYPE, f"aaa-rogue-{os.getpid()}.{SERVICE_TYPE}",
                                         addresses=[socket.inet_aton("127.0.0.1")], port=rogue.port,
                                         properties={"name": name, "abi": "x86_64", "runtimes": "python",
                                                     "version": "0"}, server="rogue.local."))
        try:
            dev = open_device(name, runner="python", token=TOKEN)
            try:
                assert dev.id == f"tcp:127.0.0.1:{srv.port}"
            finally:
                dev.close()
            assert b'"op": "hello"' in rogue.received, "the rogue advertiser was not tried first"
            assert TOKEN.encode() not in rogue.received
        finally:
            rzc.unregister_all_services()
            rzc.close()
            zc.unregister_all_services()
            zc.close()
            rogue.close()


# -- finding 10: adversarial clients -------------------------------------------------------------


def test_slowloris_is_dropped_at_the_auth_deadline(any_server):
    srv, token = any_server
    s = _connect(srv.port)
    assert recv_msg(s)["op"] == "challenge"
    hello = encode_msg({"op": "hello", "nonce": "ab" * 32, "mac": "cd" * 32})
    t0 = time.monotonic()
    closed_after = None
    for b in hello[:8]:  # one byte a second
        try:
            s.sendall(bytes([b]))
        except OSError:
            closed_after = time.monotonic() - t0
            break
        _works(srv, token)  # served meanwhile
        s.settimeout(1.0)
        try:
            data = s.recv(4096)
        except socket.timeout:
            continue
        closed_after = time.monotonic() - t0
        reply = json.loads(data[4:])
        assert "deadline" in _one_line_error(reply) and reply["closed"] is True
        break
    assert closed_after is not None and DEADLINE_S - 0.2 <= closed_after <= DEADLINE_S + 1.5, closed_after
    s.close()
    _works(srv, token)


def test_oversize_frames_are_refused_and_allocate_nothing(any_server):
    srv, token = any_server
    s = _connect(srv.port)
    recv_msg(s)
    s.sendall(struct.pack(">I", 4097) + b"{" * 100)  # a header over 4 KiB before authentication
    t0 = time.monotonic()
    err = _one_line_error(recv_msg(s))
    assert "4096" in err and "unauthorized" in err and time.monotonic() - t0 < 1.0
    assert s.recv(1) == b""
    s = _connect(srv.port)
    recv_msg(s)
    s.sendall(struct.pack(">I", 0xFFFFFFFF))  # a 4 GiB header claim
    assert "4096" in _one_line_error(recv_msg(s))
    op = "push" if srv.service == "runner" else "load"
    for size in (10 ** 12, 2 ** 62, (1 << 20) + 1):  # huge size claims after authentication: refused unread
        with _authed(srv, token) as a:
            send_msg(a, {"op": op, "path": "jobs/big", "name": "big", "size": size, "sha256": "0" * 64})
            reply = recv_msg(a)
            assert "limit" in _one_line_error(reply) and reply["closed"] is True
    with _authed(srv, token) as a:  # a header over 1 MiB after authentication
        a.sendall(struct.pack(">I", (1 << 20) + 1))
        assert "limit" in _one_line_error(recv_msg(a))
    _works(srv, token)


def _send_quietly(sock: socket.socket, header: dict, payload: bytes) -> None:
    with contextlib.suppress(OSError):  # the server may refuse and close before the payload is sent
        send_msg(sock, header, payload)


def test_the_inflight_payload_budget_is_reserved_before_receiving(any_server):
    srv, token = any_server  # budget 1.5 MiB, per payload 1 MiB
    op = "push" if srv.service == "runner" else "load"
    size = 1 << 20
    data = os.urandom(size)
    head = {"op": op, "path": "jobs/a.bin", "name": "a", "size": size, "sha256": hashlib.sha256(data).hexdigest()}
    a = _authed(srv, token)
    send_msg(a, head, data[:10])  # holds 1 MiB of the budget
    time.sleep(0.2)
    with _authed(srv, token) as b:  # as a real client does: header and payload at once
        sender = threading.Thread(target=_send_quietly, args=(b, {**head, "path": "jobs/b.bin", "name": "b"}, data))
        sender.start()
        reply = recv_msg(b)
        sender.join(10)
        assert "busy" in _one_line_error(reply) and "budget" in reply["error"]
    a.sendall(data[10:])
    reply = recv_msg(a)  # the held upload completes (a load of random bytes is a clear error, not a crash)
    assert reply["ok"] is True if op == "push" else "cannot load" in _one_line_error(reply)
    with _authed(srv, token) as b:  # released: the next one fits
        send_msg(b, {**head, "path": "jobs/b.bin", "name": "b"}, data)
        reply = recv_msg(b)
        assert reply["ok"] is True if op == "push" else "cannot load" in reply["error"]
    a.close()


def test_an_unauthenticated_flood_is_capped_and_real_clients_are_served(any_server):
    srv, token = any_server  # cap 8 connections, 4 unauthenticated per address, deadline 1.5 s
    before = _authed(srv, token)  # a client connected before the flood
    flood, refused = [], 0
    for _ in range(40):  # one address: only 4 held, the rest refused at once, with one line
        s = _connect(srv.port, "127.0.0.2")
        first = recv_msg(s)
        if first.get("op") == "challenge":
            flood.append(s)
        else:
            assert "busy" in _one_line_error(first) and "not" in first["error"] and "authenticated" in first["error"]
            refused += 1
            s.close()
    assert len(flood) == 4 and refused == 36
    _works(srv, token)  # from another address: served during the flood
    send_msg(before, {"op": "info"})
    assert recv_msg(before)["ok"]
    for src in ("127.0.0.3", "127.0.0.4"):  # more addresses: the connection cap (8) is reached
        for _ in range(4):
            s = _connect(srv.port, src)
            first = recv_msg(s)
            if first.get("op") == "challenge":
                flood.append(s)
            else:
                assert "connection cap" in _one_line_error(first)
                s.close()
    assert srv.connections == 8
    s = _connect(srv.port)
    assert "connection cap" in _one_line_error(recv_msg(s))
    s.close()
    send_msg(before, {"op": "info"})  # an authenticated client keeps being served at the cap
    assert recv_msg(before)["ok"]
    t0 = time.monotonic()
    for s in flood:  # every flood connection is dropped by the deadline
        s.settimeout(DEADLINE_S + 2)
        assert "deadline" in _one_line_error(recv_msg(s))
        s.close()
    assert time.monotonic() - t0 < DEADLINE_S + 1.5
    _works(srv, token)
    before.close()


def test_an_idle_authenticated_connection_is_closed(tmp_path):
    with serving(_runner(tmp_path, idle_timeout_s=0.5)) as srv:
        s = _authed(srv, TOKEN)
        s.settimeout(5)
        t0 = time.monotonic()
        assert s.recv(1) == b""
        assert 0.4 <= time.monotonic() - t0 < 2.0


# -- finding 8: path tricks; finding 10: disk quota, streaming -----------------------------------


BAD_PATHS = [".", "", "./", "sub/..", "..", "../x", "a/../../x", "/etc/passwd", "/tmp/x", "x\0y", "jobs/../../x",
             "\\..\\x", 7, None, ["a"]]


def test_path_tricks_are_refused_and_nothing_lands_outside(tmp_path):
    with serving(_runner(tmp_path)) as srv:
        (srv.workdir / "link").symlink_to(tmp_path)  # a symlink out of the work dir
        outside = sorted(p.name for p in tmp_path.iterdir())
        s = _authed(srv, TOKEN)
        for path in [*BAD_PATHS, "link/x", "link"]:
            data = b"payload"
            send_msg(s, {"op": "push", "path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, data)
            err = _one_line_error(recv_msg(s))
            assert "work dir" in err or "directory" in err, (path, err)
            for op in ("pull", "remove"):
                send_msg(s, {"op": op, "path": path})
                assert "work dir" in _one_line_error(recv_msg(s)) or path == "link"
        assert sorted(p.name for p in tmp_path.iterdir()) == outside  # nothing beside the work dir
        assert sorted(p.name for p in srv.workdir.iterdir()) == ["link"]
        send_msg(s, {"op": "push", "path": "sub/./f", "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}, b"x")
        assert recv_msg(s)["ok"] and (srv.workdir / "sub" / "f").read_bytes() == b"x"
        assert oct((srv.workdir / "sub" / "f").stat().st_mode & 0o777) == "0o600"


def test_push_to_dot_regression(tmp_path):
    """Finding 8: the temporary file of a push to "." used to land in the work dir's parent."""
    from edgeprobe.devices.tcp import TcpTransport
    from edgeprobe.errors import TransportError

    with serving(_runner(tmp_path)) as srv:
        t = TcpTransport("127.0.0.1", srv.port, TOKEN)
        f = tmp_path / "f"
        f.write_bytes(b"data")
        for path in (".", "", "sub/.."):
            with pytest.raises(TransportError, match="work dir"):
                t.push(f, path)
        t.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "work"]
        s = _authed(srv, TOKEN)  # mid-upload: the old server had '.work.part-*' beside the work dir by now
        data = b"x" * 1000
        send_msg(s, {"op": "push", "path": ".", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
                 data[:10])
        time.sleep(0.3)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "work"]
        s.sendall(data[10:])
        assert "work dir" in _one_line_error(recv_msg(s))
        s.close()


def test_disk_quota_and_streamed_pull(tmp_path):
    with serving(_runner(tmp_path, max_disk_bytes=5 << 19)) as srv:  # 2.5 MiB quota, 1 MiB per push
        check_disk_quota_and_streamed_pull(srv, tmp_path)


def check_disk_quota_and_streamed_pull(srv, tmp_path: Path) -> None:
    """Against any runner server with a 2.5 MiB quota and 1 MiB per push (also the JVM core's)."""
    from edgeprobe.devices.tcp import TcpTransport
    from edgeprobe.errors import TransportError

    t = TcpTransport("127.0.0.1", srv.port, TOKEN)
    blobs = []
    for i in range(3):
        f = tmp_path / f"b{i}"
        f.write_bytes(os.urandom(1_000_000))
        blobs.append(f)
    t.push(blobs[0], "jobs/a")
    t.push(blobs[1], "jobs/b")
    t.push(blobs[1], "jobs/b")  # replacing a file counts only the difference
    with pytest.raises(TransportError, match="quota"):
        t.push(blobs[2], "jobs/c")
    assert not (srv.workdir / "jobs" / "c").exists()
    t.remove("jobs/a")
    t.push(blobs[2], "jobs/c")  # room again
    t.pull("jobs/c", tmp_path / "c.back")
    assert (tmp_path / "c.back").read_bytes() == blobs[2].read_bytes()
    with pytest.raises(TransportError, match="no file"):
        t.pull("jobs/missing", tmp_path / "x")
    t.close()


# -- finding 7: argv tricks -----------------------------------------------------------------------


def test_run_builds_the_argv_itself_from_a_structured_request(tmp_path):
    from edgeprobe.devices.tcp import TcpTransport
    from edgeprobe.errors import TransportError

    target = tmp_path / "pwned"
    with serving(_runner(tmp_path)) as srv:
        work = srv.workdir
        t = TcpTransport("127.0.0.1", srv.port, TOKEN)
        r = t.run(["@python", "--model", "jobs/m.pte", "--vectors", "jobs/v.epv", "--warmup", "3", "--iterations", "20",
                   "--min-seconds", "0.5", "--method", "forward", "--output", "jobs/r.json"], timeout_s=30)
        assert json.loads(r.stdout) == ["--model", f"{work}/jobs/m.pte", "--vectors", f"{work}/jobs/v.epv",
                                        "--warmup", "3", "--iterations", "20", "--min-seconds", "0.5",
                                        "--method", "forward", "--output", f"{work}/jobs/r.json"]
        for argv in (["@python", "--model", "m", f"--output={target}"], ["@python", "--model", "m", "--out", str(target)],
                     ["@python", f"--model={target}"], ["@python", "--model", "m", "--output"],
                     ["taskset", "0x1", "@python", "--model", "m"], ["@python", "--model", "m", "--warmup", "3;id"]):
            with pytest.raises(TransportError):  # refused before anything is sent
                t.run(argv, timeout_s=5)
        s = _authed(srv, TOKEN)
        bad = [
            ({"model": "m", f"output={target}": 1}, "does not take"),
            ({"model": "m", "out": str(target)}, "does not take"),
            ({"model": "m", "--output": str(target)}, "does not take"),
            ({"model": "/etc/passwd"}, "work dir"),
            ({"model": "m", "output": str(target)}, "work dir"),
            ({"model": "../../x"}, "work dir"),
            ({"model": "m", "method": f"--output={target}"}, "'method' must be"),
            ({"model": "m", "warmup": f"1 --output {target}"}, "'warmup' must be"),
            ({"model": "m", "warmup": True}, "'warmup' must be"),
            ({"model": "m", "iterations": 0}, "'iterations' must be"),
            ({"model": "m", "rtol": float("nan")}, "'rtol' must be"),
            ({"model": "m", "split_name": "-x"}, "native runner only"),
            ({"vectors": "v"}, "needs 'model'"),
            ("--model m", "JSON object"),
        ]
        for args, why in bad:
            send_msg(s, {"op": "run", "runner": "python", "args": args, "timeout_s": 5})
            assert why in _one_line_error(recv_msg(s)), (args, why)
        for req, why in (({"op": "run", "argv": ["@python", "--model", "m"]}, "structured"),
                         ({"op": "run", "runner": "sh", "args": {"model": "m"}}, "native or python"),
                         ({"op": "run", "runner": "native", "args": {"model": "m"}}, "no native runner"),
                         ({"op": "run", "runner": "python", "args": {"model": "m"}, "timeout_s": 1e9}, "timeout_s")):
            send_msg(s, req)
            assert why in _one_line_error(recv_msg(s)), req
        assert not target.exists()


def test_native_split_args_are_confined_too(tmp_path):
    work = tmp_path.resolve()

    def confine(p):
        if not isinstance(p, str) or ".." in p or p.startswith("/"):
            raise ProtocolError("work dir")
        return work / p

    argv = build_argv("native", {"model": "m", "split_server": "10.0.0.1:9000", "split_token_file": "jobs/t",
                                 "split_name": "edgeprobe-split-1-ab", "split_send": 2, "split_encoding": "int8",
                                 "split_send_inputs": True, "split_timeout_s": 60}, confine)
    assert argv == ["--model", f"{work}/m", "--split-server", "10.0.0.1:9000", "--split-token-file", f"{work}/jobs/t",
                    "--split-name", "edgeprobe-split-1-ab", "--split-send", "2", "--split-encoding", "int8",
                    "--split-send-inputs", "1", "--split-timeout-s", "60.0"]
    for key, value in (("split_server", "-x:1"), ("split_server", "h:99999"), ("split_encoding", "bf9"),
                       ("split_token_file", "/etc/shadow"), ("split_send_inputs", "1")):
        with pytest.raises(ProtocolError):
            build_argv("native", {"model": "m", key: value}, confine)
    # the host's argv for a split run translates one to one
    req = request_from_argv(["@native", "--model", "m", "--split-server", "none", "--split-send-inputs", "1",
                             "--split-send", "3"], 60)
    assert req["args"] == {"model": "m", "split_server": "none", "split_send_inputs": True, "split_send": 3}
    assert set(RUN_ARGS) >= set(req["args"])


@pytest.mark.parametrize("argv", [["--out", "X"], ["--outp", "X"], ["--output=X", "--mod", "m"]])
def test_python_runner_takes_no_abbreviations(tmp_path, argv):
    """allow_abbrev=False: ``--out`` is not ``--output`` (a prefix used to write anywhere)."""
    target = tmp_path / "X"
    argv = [a.replace("X", str(target)) for a in argv]
    p = subprocess.run([sys.executable, "-m", "edgeprobe_runner", "--model", str(tmp_path / "m.pte"), *argv],
                       capture_output=True, text=True, timeout=120)
    if argv[0].startswith("--output="):  # the exact flag with '=' still works; the abbreviation does not
        assert p.returncode == 2 and "--mod" in p.stderr
        # the usage error is recorded where the exact flag said (PROTOCOL.md, as the native runner does)
        assert json.loads(target.read_text())["error"]["code"] == "usage"
    else:
        assert p.returncode == 2 and "unrecognized arguments" in p.stderr
        assert not target.exists()


# -- fuzz -----------------------------------------------------------------------------------------

OPS = ["info", "push", "pull", "remove", "run", "load", "unload", "profile", "hello", "challenge", "", None, 1]
KEYS = ["op", "path", "size", "sha256", "runner", "args", "timeout_s", "name", "encoding", "reply_encoding", "runs",
        "argv", "nonce", "mac"]
ODD = [None, True, False, 0, -1, 1, 2 ** 31, 2 ** 63, 10 ** 30, -2 ** 70, 0.5, 1e308, float("nan"), float("inf"), "",
       ".", "..", "/etc/passwd", "jobs/x", "a/../../b", "m", "p", "--output=/tmp/x", "x" * 300, "\u0000", "fp32",
       "int8", "native", "python", "ab" * 32, [], [1, "a"], {}, {"model": "m"}, {"model": "/etc/passwd"}]
json_leaf = st.one_of(st.sampled_from(ODD), st.integers(-2 ** 70, 2 ** 70), st.text(max_size=12))
json_value = st.one_of(json_leaf, st.lists(json_leaf, max_size=3),
                       st.dictionaries(st.sampled_from(list(RUN_ARGS) + KEYS), json_leaf, max_size=3))


@st.composite
def frames(draw) -> bytes:
    """One or two frames: a header (mostly a plausible request, sometimes junk) with a length that
    is right or off, and a payload that is as long as its size says, or not."""
    out = b""
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            out += draw(st.binary(max_size=64))
            continue
        header = draw(st.dictionaries(st.sampled_from(KEYS + list(RUN_ARGS)), json_value, max_size=4))
        header["op"] = draw(st.sampled_from(OPS))
        size = draw(st.integers(0, 64))
        if draw(st.booleans()):
            header["size"] = draw(st.one_of(st.just(size), st.integers(-5, 2 ** 40), json_leaf))
        body = json.dumps(header).encode() if kind > 1 else draw(st.binary(max_size=40))
        n = len(body) + (draw(st.integers(-3, 3)) if kind == 9 else 0)
        out += struct.pack(">I", max(n, 0)) + body + draw(st.binary(max_size=size))
    return out


def _mutants(seeds: list[bytes], n: int, seed: int):
    """``n`` inputs from a seeded mutation loop over valid frames: bit flips, inserted, deleted and
    overwritten bytes, truncation, a wrong length, header values swapped for odd ones, splices."""
    import random

    rng = random.Random(seed)
    for _ in range(n):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            m = rng.randrange(8)
            if m == 0 and data:
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
            elif m == 1:
                data[rng.randint(0, len(data)):0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            elif m == 2 and data:
                i = rng.randrange(len(data))
                del data[i:i + rng.randint(1, 16)]
            elif m == 3:
                data = data[:rng.randint(0, len(data))]
            elif m == 4 and len(data) >= 4:
                data[0:4] = struct.pack(">I", rng.choice([0, 1, len(data) - 4 + rng.randint(-3, 3), 4096, 4097,
                                                          1 << 20, (1 << 20) + 1, 0xFFFFFFFF]) & 0xFFFFFFFF)
            elif m == 5:  # a header field replaced by an odd value
                try:
                    (hn,) = struct.unpack(">I", data[:4])
                    header = json.loads(data[4:4 + hn])
                    key = rng.choice(list(header) + KEYS + list(RUN_ARGS))
                    if rng.random() < 0.5 and isinstance(header.get("args"), dict):
                        header["args"][rng.choice(list(RUN_ARGS) + ["out", "--model"])] = rng.choice(ODD)
                    else:
                        header[key] = rng.choice(ODD)
                    body = json.dumps(header).encode()
                    data = bytearray(struct.pack(">I", len(body)) + body) + data[4 + hn:]
                except (ValueError, struct.error, TypeError, AttributeError):
                    pass
            elif m == 6:
                data += rng.choice(seeds)
            elif m == 7 and data:
                i = rng.randrange(len(data))
                data[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"NaN", b"[[[[", b'"\\u'])
        yield bytes(data)


def _replies(data: bytes) -> list[dict]:
    """The server's replies: whole frames, each a JSON object with ok; a failure is one line."""
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        reply = json.loads(data[i + 4:i + 4 + n])
        i += 4 + n
        if reply.get("op") == "challenge":
            out.append(reply)
            continue
        assert isinstance(reply.get("ok"), bool), reply
        if reply["ok"]:
            i += reply["size"] if isinstance(reply.get("size"), int) else 0
        else:
            _one_line_error(reply)
        out.append(reply)
    assert i == len(data), "a reply was cut"
    return out


def _feed(serve, data: bytes) -> list[dict]:
    """``data`` from a client that then stops sending, to ``serve`` on a socketpair; the replies."""
    return _replies(_exchange(serve, data))


def _exchange(serve, data: bytes) -> bytes:
    """``data`` from a client that then stops sending, to ``serve`` on a socketpair; all it sent back."""
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        b.settimeout(2.0)
        t0 = time.monotonic()
        try:
            serve(b)
        except (OSError, ProtocolError):
            pass  # what the handler does: the connection closes
        assert time.monotonic() - t0 < 2.0, "the server hung on this input"
        b.close()
        got = bytearray()
        while chunk := a.recv(1 << 16):
            got += chunk
    return bytes(got)


N_MUTANTS = 10_000
HYPOTHESIS = settings(max_examples=1_000, deadline=None, database=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _fuzz(serve, seeds: list[bytes], check=lambda replies: None) -> None:
    """10,000 seeded mutants of valid frames, then 1,000 hypothesis-built frame sequences: no crash
    (an exception other than the connection closing), no hang, every reply a whole frame, every
    refusal one line."""
    t0 = time.monotonic()
    for data in _mutants(seeds, N_MUTANTS, seed=11):
        check(_feed(serve, data))

    @HYPOTHESIS
    @given(frames())
    def generated(data):
        check(_feed(serve, data))

    generated()
    print(f"{N_MUTANTS} mutants + {HYPOTHESIS.max_examples} generated in {time.monotonic() - t0:.1f} s")


def test_fuzz_runner_server_requests(tmp_path):
    srv = _runner(tmp_path, python_runner=["/bin/true"])
    (srv.workdir / "jobs").mkdir()
    (srv.workdir / "jobs" / "x").write_bytes(b"hello")
    data = b"0123456789"
    seeds = [encode_msg({"op": "info"}), encode_msg({"op": "pull", "path": "jobs/x"}),
             encode_msg({"op": "push", "path": "jobs/y", "size": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()}) + data,
             encode_msg({"op": "remove", "path": "jobs/nothing"}),
             encode_msg({"op": "run", "runner": "python", "args": {"model": "jobs/x", "warmup": 1, "iterations": 2,
                                                                   "output": "jobs/r.json", "method": "forward"},
                         "timeout_s": 5})]
    try:
        _fuzz(srv.serve_connection, seeds)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # nothing written beside the work dir
    finally:
        srv.server_close()


def test_fuzz_split_server_requests():
    import torch

    from edgeprobe_runner import codec

    srv = _tail()

    class Double(torch.nn.Module):
        def forward(self, x):
            return x * 2

    x = torch.ones(1, 3)
    srv.programs["p"] = type("T", (), {"module": torch.export.export(Double(), (x,)).module()})()
    good = codec.encode([x], "fp32")
    seeds = [encode_msg({"op": "info"}), encode_msg({"op": "unload", "name": "nothing"}),
             encode_msg({"op": "run", "name": "p", "encoding": "fp32", "size": len(good)}) + good,
             encode_msg({"op": "run", "name": "p", "encoding": "int8", "reply_encoding": "fp16",
                         "size": len(good)}) + good,
             encode_msg({"op": "load", "name": "q", "size": 4, "sha256": hashlib.sha256(b"junk").hexdigest()}) + b"junk",
             encode_msg({"op": "profile", "name": "p", "runs": 1, "size": len(good)}) + good]
    try:
        _fuzz(srv.serve_connection, seeds)
        # what the fuzz left behind: no more programs than the cap, and the real one still serves x * 2
        assert len(srv.programs) <= srv.max_programs and "p" in srv.programs
        got = _exchange(srv.serve_connection, seeds[2])
        (n,) = struct.unpack(">I", got[:4])
        reply = json.loads(got[4:4 + n])
        assert reply["ok"], reply
        torch.testing.assert_close(codec.decode(got[4 + n:4 + n + reply["size"]])[0], x * 2)
    finally:
        srv.server_close()


@pytest.mark.parametrize("service", ["runner", "split"])
def test_fuzz_handshake(service):
    """Mutated and generated hellos before authentication: never authenticated, never a hang, the
    challenge and at most one one-line refusal back."""

    def info():
        raise AssertionError("authenticated a fuzzed hello")

    def serve(sock):
        with pytest.raises((AuthError, OSError)):
            wire.server_handshake(sock, TOKEN, service, info, deadline_s=1.0)

    def check(replies):
        assert replies[0]["op"] == "challenge" and replies[0]["service"] == service
        assert 1 <= len(replies) <= 2
        if len(replies) == 2:
            assert replies[1]["closed"] is True and replies[1]["error"].startswith("unauthorized")

    seeds = [encode_msg({"op": "hello", "nonce": "ab" * 32, "mac": "cd" * 32}),
             encode_msg({"op": "hello", "token": TOKEN}), encode_msg({"op": "info"})]
    _fuzz(serve, seeds, check)


def test_native_split_token_file_is_pushed_0600_and_removed_after(tmp_path):
    """The split server's token reaches a tcp: device's native runner as a file (never argv): 0600 in
    the work dir during the run, gone from the device and from here after it, even when the run fails."""
    from edgeprobe.devices import Device
    from edgeprobe.devices.tcp import TcpTransport
    from edgeprobe.split import _NativeSplit

    with serving(_runner(tmp_path)) as srv:
        ns = object.__new__(_NativeSplit)
        ns.dev = Device(f"tcp:127.0.0.1:{srv.port}", TcpTransport("127.0.0.1", srv.port, TOKEN), "python")
        local_dir = tmp_path / "host"
        local_dir.mkdir()
        with pytest.raises(RuntimeError, match="the run"):
            with ns._token_file(STOKEN, "jobs/key", local_dir) as args:
                assert args[0] == "--split-token-file" and STOKEN not in args[1]
                on_device = srv.confined(args[1])
                assert on_device.read_text().strip() == STOKEN and on_device.stat().st_mode & 0o777 == 0o600
                assert [p.stat().st_mode & 0o777 for p in local_dir.iterdir()] == [0o600]
                raise RuntimeError("the run failed")
        assert not on_device.exists() and list(local_dir.iterdir()) == []
        with ns._token_file(None, "jobs/key", local_dir) as args:  # device only: no token, no file
            assert args == []
        ns.close()


def test_a_runner_flooding_its_output_gets_the_tail_back(tmp_path):
    """stdout/stderr come back as their last 64 KiB: 4 MiB of control characters (6 bytes each once
    JSON-escaped) from a runner still fit the client's 1 MiB reply header."""
    from edgeprobe.devices.tcp import TcpTransport

    noisy = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'\\x01' * (4 << 20)); "
                                   "sys.stderr.buffer.write(b'\\x02' * (4 << 20) + b'end')"]
    with serving(_runner(tmp_path, python_runner=noisy)) as srv:
        t = TcpTransport("127.0.0.1", srv.port, TOKEN)
        r = t.run(["@python", "--model", "m"], timeout_s=30)
        assert r.exit_code == 0 and r.stderr.endswith("end") and "bytes cut" in r.stdout
        assert len(r.stdout) < (65 << 10) and len(r.stderr) < (65 << 10)
        t.close()


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_size_claims_commit_no_memory():
    """Four connections each claiming a 256 MiB payload and sending 10 bytes: the split server holds
    what arrived, not what was claimed (the old server allocated bytearray(size) first: +1 GiB here)."""
    with serving(_tail(max_bytes=1 << 30, max_inflight_bytes=2 << 30)) as srv:
        before = _rss_bytes()
        held = []
        for i in range(4):
            s = _authed(srv, STOKEN)
            send_msg(s, {"op": "load", "name": f"n{i}", "size": 256 << 20, "sha256": "0" * 64}, b"0123456789")
            held.append(s)
        time.sleep(0.5)
        grown = _rss_bytes() - before
        assert srv.payloads.used == 4 * (256 << 20)  # reserved against the budget, not allocated
        assert grown < 32 << 20, grown
        for s in held:
            s.close()
