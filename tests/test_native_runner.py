"""The native C++ runner, built against the executorch wheel and run for real."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import pytest
import torch

import edgeprobe
import framing  # tests/ is on sys.path (rootdir conftest)
from edgeprobe.devices import open_device
from edgeprobe.session import MeasureConfig, measure
from edgeprobe.lower import Artifact


def test_native_bench_xnnpack(native_runner, tiny_pte):
    r = edgeprobe.bench(tiny_pte, iterations=9, warmup=2)
    assert r.ok, r.run.error
    run = r.run
    assert run.runner.flavor == "native" and run.runner.runtime == "executorch"
    assert run.verification.checked and run.verification.passed
    assert len(run.timing.iteration_ns) == 9 and run.timing.load_ms > 0
    assert run.memory.peak_rss_bytes >= run.memory.baseline_rss_bytes > 0
    assert run.config.threads_used and run.config.threads_used >= 1
    # This machine has no powercap/RAPL tree and no battery: the meter must say so, never a number.
    import os
    if not os.path.isdir("/sys/class/powercap") and not any(os.scandir("/sys/class/power_supply")
                                                              if os.path.isdir("/sys/class/power_supply") else ()):
        assert run.energy is not None and not run.energy.available
        assert run.energy.energy_j is None and run.energy.reason and "RAPL" in run.energy.reason
    else:
        assert run.energy is not None
        assert run.energy.meter in ("rapl", "battery") if run.energy.available else run.energy.reason


def test_native_portable_and_threads(native_runner, tiny_portable_pte):
    r = edgeprobe.bench(tiny_portable_pte, iterations=3, threads=1)
    assert r.ok, r.run.error
    assert r.run.config.threads_requested == 1 and r.run.config.threads_used == 1


def test_native_and_python_runners_agree(native_runner, tiny_pte, tmp_path):
    """Both runners check the same .pte against the same expected outputs, and compute the same."""
    results = {}
    for flavor in ("native", "python"):
        out = tmp_path / f"{flavor}.epv"
        with open_device("local", runner=flavor) as dev:
            r = measure(dev, tiny_pte, MeasureConfig(iterations=2, warmup=0), save_outputs_local=out)
        assert r.ok, (flavor, r.run.error)
        from edgeprobe_runner import vectors as epv

        results[flavor] = [torch.frombuffer(bytearray(t.data), dtype=torch.float32) for t in epv.read(str(out))[0].expected]
    assert len(results["native"]) == len(results["python"]) >= 1
    for a, b in zip(results["native"], results["python"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_native_output_mismatch(native_runner, tiny_pte, tmp_path):
    from edgeprobe_runner import vectors as epv

    d = tmp_path / "bad"
    shutil.copytree(tiny_pte.dir, d)
    s = epv.read(str(d / "vectors.epv"))[0]
    wrong = epv.RawTensor("float32", s.expected[0].shape, torch.full(s.expected[0].shape, 7.0).numpy().tobytes())
    with open(d / "vectors.epv", "wb") as f:
        epv.write(f, [epv.TestSet(s.inputs, (wrong,))])
    r = edgeprobe.bench(Artifact(d, tiny_pte.manifest), iterations=2)
    assert not r.ok and r.run.error.code == "output_mismatch" and r.run.timing is None


def test_native_truncated_and_corrupt_pte(native_runner, tiny_pte, tmp_path):
    for name, mangle in (("trunc", lambda b: b[: len(b) // 2]), ("zeros", lambda b: b"\0" * len(b))):
        d = tmp_path / name
        shutil.copytree(tiny_pte.dir, d)
        (d / "model.pte").write_bytes(mangle((d / "model.pte").read_bytes()))
        r = edgeprobe.bench(Artifact(d, tiny_pte.manifest), iterations=2)
        assert not r.ok and r.run.error.code == "load_failed", (name, r.run.error)


def test_native_bad_arguments_exit_2(native_runner):
    p = subprocess.run([str(native_runner), "--iterations", "x"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr


def test_rapl_meter_from_fake_sysfs(native_runner, tiny_pte, tmp_path, monkeypatch):
    """The energy arithmetic against a powercap tree whose counter a thread drives (1 J per 10 ms)."""
    dom = tmp_path / "sys/class/powercap/intel-rapl:0"
    dom.mkdir(parents=True)
    (dom / "name").write_text("package-0\n")
    (dom / "max_energy_range_uj").write_text("262143328850\n")
    (dom / "energy_uj").write_text("1000\n")
    stop = threading.Event()

    def drive():
        v = 1000
        while not stop.is_set():
            v += 1_000_000
            tmp = dom / "energy_uj.tmp"
            tmp.write_text(f"{v}\n")
            tmp.replace(dom / "energy_uj")
            time.sleep(0.01)

    t = threading.Thread(target=drive, daemon=True)
    t.start()
    monkeypatch.setenv("EDGEPROBE_SYSFS_ROOT", str(tmp_path / "sys"))
    try:
        r = edgeprobe.bench(tiny_pte, iterations=1, warmup=0, min_seconds=0.3)
    finally:
        stop.set()
        t.join()
    e = r.run.energy
    assert r.ok and e.available and e.meter == "rapl"
    # ~100 J/s driven; allow for scheduling jitter on a loaded 2-core machine.
    assert 0.2 * e.duration_s * 100 <= e.energy_j <= 3 * e.duration_s * 100 + 2
    assert list(e.domains) == ["intel-rapl:0:package-0"]


def test_profile_lists_real_operators(native_runner):
    rep = edgeprobe.profile("tiny_cnn", iterations=3, warmup=1)
    assert rep.result.ok, rep.result.run.error
    assert rep.operators and rep.etdump_path.stat().st_size > 0
    names = " ".join(o.name for o in rep.operators)
    assert any(o.delegated for o in rep.operators) or "conv" in names.lower()
    assert all(o.count >= 1 and o.total_ms >= 0 for o in rep.operators)


def test_profile_portable_shows_aten_ops(native_runner):
    rep = edgeprobe.profile("tiny_cnn", backend="portable", iterations=2, warmup=0)
    assert rep.result.ok, rep.result.run.error
    names = [o.name for o in rep.operators]
    assert any("convolution" in n for n in names), names
    assert not any(o.delegated for o in rep.operators)


@pytest.mark.slow
def test_native_mobilenet_v2_end_to_end(native_runner):
    r = edgeprobe.bench("mobilenet_v2", iterations=5, warmup=1)
    assert r.ok, r.run.error
    assert r.manifest.planned_memory_bytes and r.stats.p50_ms > 0
    assert json.loads(r.to_json())["run"]["verification"]["passed"] is True


# ---------------------------------------------------------------- hardening (issue 11: findings 11-13)

import hashlib
import hmac
import os
import random
import socket
import stat
import struct
from pathlib import Path

NATIVE_SRC = Path(__file__).resolve().parents[1] / "device_runner" / "native"


def _run_native(native_runner, *args, env=None, timeout=120):
    return subprocess.run([str(native_runner), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _one_line_error(rec: dict, code: str) -> str:
    assert rec["status"] == "error" and rec["error"]["code"] == code, rec["error"]
    msg = rec["error"]["message"]
    assert msg and "\n" not in msg and len(msg) < 600, msg
    return msg


def _epv_tensor(dtype: int, shape, data: bytes, nbytes=None) -> bytes:
    return (struct.pack("<II", dtype, len(shape)) + b"".join(struct.pack("<q", d) for d in shape)
            + struct.pack("<Q", len(data) if nbytes is None else nbytes) + data)


def _epv(sets, count=None) -> bytes:
    out = b"EPVEC001" + struct.pack("<I", len(sets) if count is None else count)
    for ins, outs in sets:
        out += struct.pack("<I", len(ins)) + b"".join(ins) + struct.pack("<I", len(outs)) + b"".join(outs)
    return out


_F4 = struct.pack("<4f", 1, 2, 3, 4)
BAD_VECTORS = {
    # name: (bytes, a word the one-line message must hold)
    "empty file": (b"", "truncated"),
    "bad magic": (b"EPVEC999" + b"\0" * 8, "magic"),
    "truncated in the data": (_epv([([_epv_tensor(6, [4], _F4)], [])])[:-7], "truncated"),
    "2^32-1 test sets": (_epv([], count=2**32 - 1), "test set count"),
    "2^32-1 inputs": (b"EPVEC001" + struct.pack("<II", 1, 2**32 - 1) + b"\0" * 8, "input tensor count"),
    "count above what the file holds": (_epv([], count=1000), "needs at least"),
    "element count overflows 64 bits": (_epv([([_epv_tensor(6, [2**31 - 1] * 3, b"", nbytes=0)], [])]), "overflows"),
    "byte count overflows 64 bits": (_epv([([_epv_tensor(7, [2**31 - 1, 2**31 - 1, 2**3], b"", nbytes=0)], [])]), "overflows"),
    "nbytes 2^64-1": (_epv([([_epv_tensor(6, [4], b"", nbytes=2**64 - 1)], [])]), "data bytes"),
    "nbytes larger than the file": (_epv([([_epv_tensor(0, [1 << 30], b"", nbytes=1 << 30)], [])]), "truncated"),
    "dim above int32": (_epv([([_epv_tensor(0, [2**40], b"", nbytes=2**40)], [])]), "outside"),
    "negative dim": (_epv([([_epv_tensor(6, [-1], b"", nbytes=0)], [])]), "outside"),
    "rank 17": (_epv([([_epv_tensor(6, [1] * 17, struct.pack("<f", 1))], [])]), "rank"),
    "unknown dtype": (_epv([([_epv_tensor(99, [1], b"x")], [])]), "dtype"),
    "trailing garbage": (_epv([([_epv_tensor(6, [4], _F4)], [])]) + b"junk", "trailing"),
}


@pytest.mark.parametrize("name", list(BAD_VECTORS))
def test_bad_vectors_give_an_error_record_not_a_crash(native_runner, tiny_pte, tmp_path, name):
    """Finding 11: the .epv parser. Before, 2^32 test sets or an overflowing shape aborted the runner
    (std::bad_alloc / length_error escaped; no record); now every one is a bad_vectors record."""
    data, word = BAD_VECTORS[name]
    vec, out = tmp_path / "bad.epv", tmp_path / "r.json"
    vec.write_bytes(data)
    p = _run_native(native_runner, "--model", tiny_pte.model_path, "--vectors", vec, "--iterations", 1, "--output", out)
    # a failed measurement is a record and exit 0 (PROTOCOL.md, "Exit code"): never a signal
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    msg = _one_line_error(json.loads(out.read_text()), "bad_vectors")
    assert word in msg, msg


def test_vectors_that_are_a_directory(native_runner, tiny_pte, tmp_path):
    p = _run_native(native_runner, "--model", tiny_pte.model_path, "--vectors", tmp_path, "--output", tmp_path / "r.json")
    assert p.returncode == 0, p.stderr
    _one_line_error(json.loads((tmp_path / "r.json").read_text()), "bad_vectors")


@pytest.mark.parametrize("args,word", [
    (["--iterations", "x"], "--iterations"),
    (["--iterations", "1e18"], "--iterations"),
    (["--warmup", "-1"], "--warmup"),
    (["--rtol", "nan"], "--rtol"),
    (["--min-seconds", "inf"], "--min-seconds"),
    (["--threads", "2.5"], "--threads"),
    (["--split-token", "secret"], "--split-token-file"),
    (["--split-server", "127.0.0.1:1"], "--split-outputs"),
    (["--bogus", "1"], "unknown argument"),
    (["--split-server", "none", "--split-outputs", "o", "--split-token-file", "/nonexistent/t"], "token"),
])
def test_bad_arguments_write_an_error_record(native_runner, tiny_pte, tmp_path, args, word):
    """Every bad input gets a one-line error in the record (exit 2), not only a usage text on stderr."""
    out = tmp_path / "r.json"
    p = _run_native(native_runner, "--model", tiny_pte.model_path, *args, "--output", out)
    assert p.returncode == 2, (p.returncode, p.stderr)
    msg = _one_line_error(json.loads(out.read_text()), "usage")
    assert word in msg and word in p.stderr, msg
    assert "secret" not in msg


def test_help_exits_0(native_runner):
    p = _run_native(native_runner, "--help")
    assert p.returncode == 0 and "--split-token-file" in p.stdout and "EDGEPROBE_SPLIT_TOKEN" in p.stdout


def test_exception_with_the_battery_thread_running(native_runner, tiny_pte, tmp_path):
    """Finding 11: an exception in the timed loop while the battery sampler runs. Before, only
    Failure was caught and the joinable sampler thread was destroyed during unwinding: std::terminate,
    SIGABRT, no record. Now the sampler is joined (RAII) and the top-level catch writes the record."""
    bat = tmp_path / "sys/class/power_supply/battery"
    bat.mkdir(parents=True)
    for name, value in (("type", "Battery"), ("status", "Discharging"), ("current_now", "-300000"),
                        ("voltage_now", "3900000")):
        (bat / name).write_text(value + "\n")
    out = tmp_path / "r.json"
    p = _run_native(native_runner, "--model", tiny_pte.model_path, "--vectors", tiny_pte.vectors_path,
                    "--warmup", 0, "--iterations", 3, "--output", out,
                    env={"EDGEPROBE_SYSFS_ROOT": str(tmp_path / "sys"), "EDGEPROBE_RUNNER_FAULT": "timed_loop"})
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])  # an internal error: exit 1, not a signal
    msg = _one_line_error(json.loads(out.read_text()), "internal_error")
    assert "injected fault" in msg and "injected fault" in p.stderr


# -- SHA-256 / HMAC-SHA256 written by hand (sha256.cpp) against Python's hashlib/hmac

FIPS_SHA256 = {  # FIPS 180-4 examples (NIST CSRC) and the empty string
    b"": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    b"abc": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq":
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu":
        "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
    b"a" * 1_000_000: "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
}
RFC4231_HMAC = [  # (key, data, HMAC-SHA256), RFC 4231 test cases 1, 2, 6
    (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
]


def test_sha256_and_hmac_match_python(tmp_path):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.fail("no C++ compiler on PATH (the native runner needs one too)")
    exe = tmp_path / "sha256_check"
    subprocess.run([cxx, "-std=c++17", "-O2", "-o", str(exe), str(NATIVE_SRC / "tools/sha256_check.cpp"),
                    str(NATIVE_SRC / "sha256.cpp")], check=True, capture_output=True, timeout=120)
    rng = random.Random(11)
    cases = [(b"", m) for m in FIPS_SHA256] + [(k, m) for k, m, _ in RFC4231_HMAC]
    # every length around the 55/56/64-byte padding edges, keys around the 64-byte block, then random
    cases += [(rng.randbytes(k), rng.randbytes(m)) for k in (0, 1, 63, 64, 65, 200) for m in range(0, 130)]
    cases += [(rng.randbytes(rng.randrange(0, 300)), rng.randbytes(rng.randrange(0, 3000))) for _ in range(2000)]
    stdin = "".join(f"{k.hex() or '-'} {m.hex() or '-'}\n" for k, m in cases)
    p = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True, timeout=120)
    lines = p.stdout.splitlines()
    assert len(lines) == len(cases)
    for (k, m), line in zip(cases, lines, strict=True):
        digest, mac = line.split()
        assert digest == hashlib.sha256(m).hexdigest(), (k.hex(), m[:64].hex())
        assert mac == hmac.new(k, m, hashlib.sha256).hexdigest(), (k.hex(), m[:64].hex())
    for m, want in FIPS_SHA256.items():
        assert hashlib.sha256(m).hexdigest() == want  # the table itself
    for k, m, want in RFC4231_HMAC:
        assert hmac.new(k, m, hashlib.sha256).hexdigest() == want


# -- split mode: the v2 handshake (auth protocol v2) against a tiny server that speaks the spec itself


_send, _recv_exact, _recv = framing.send, framing.recv_exact, framing.recv


def _mac(token: str, role: str, sn: str, cn: str, service: str = "split") -> str:
    return hmac.new(token.encode(), f"edgeprobe-auth-v1|{role}|{service}|{sn}|{cn}".encode(), hashlib.sha256).hexdigest()


class TinySplitServer:
    """One connection at a time on loopback, speaking auth v2 by the spec (not through wire.py), then
    answering run requests with the head's outputs doubled. ``reply(header, frame) -> (header, payload)``
    replaces the run reply; ``service``/``prove`` make it a wrong or an impostor server."""

    def __init__(self, token: str, *, service: str = "split", prove: bool = True, reply=None) -> None:
        self.token, self.service, self.prove, self.reply = token, service, prove, reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.events: list = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        from edgeprobe_runner import codec

        self.sock.settimeout(60)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            sn = os.urandom(32).hex()
            _send(conn, {"op": "challenge", "auth": "hmac-sha256", "service": self.service, "nonce": sn})
            try:
                hello = _recv(conn)
            except (EOFError, OSError):  # the client left at the challenge (e.g. the wrong service)
                self.events.append(("closed before hello", None))
                return
            self.events.append(("hello", hello))
            cn = hello.get("nonce", "")
            if hello.get("op") != "hello" or hello.get("mac") != _mac(self.token, "client", sn, cn, self.service):
                _send(conn, {"ok": False, "closed": True, "error": "unauthorized: wrong token"})
                return
            mac_s = _mac(self.token, "server", sn, cn, self.service) if self.prove else "0" * 64
            _send(conn, {"ok": True, "mac": mac_s, "info": {"device": "cpu", "programs": ["n"]}})
            while True:
                try:
                    req = _recv(conn)
                except (EOFError, OSError):
                    self.events.append(("closed", None))
                    return
                frame = _recv_exact(conn, req["size"])
                self.events.append(("run", req))
                if self.reply is not None:
                    header, payload = self.reply(req, frame)
                else:
                    payload = codec.encode([t * 2 for t in codec.decode(frame)], "fp32")
                    header = {"ok": True, "size": len(payload), "server_ms": 0.25, "decode_ms": 0.01,
                              "encode_ms": 0.02, "handle_ms": 0.3}
                if isinstance(header, bytes):  # a header text json.dumps cannot write
                    conn.sendall(struct.pack(">I", len(header)) + header + payload)
                else:
                    _send(conn, header, payload)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=30)


@pytest.fixture
def split_token_file(tmp_path):
    path = tmp_path / "split-token"
    path.write_text("s3cret-token\n")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def _run_split(native_runner, tiny_pte, tmp_path, port, *extra, env=None, iterations=3):
    out, outs = tmp_path / "r.json", tmp_path / "outs.bin"
    p = _run_native(native_runner, "--model", tiny_pte.model_path, "--vectors", tiny_pte.vectors_path,
                    "--warmup", 1, "--iterations", iterations, "--output", out,
                    "--split-server", f"127.0.0.1:{port}", "--split-name", "n", "--split-outputs", outs,
                    "--split-timeout-s", 20, *extra, env=env)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    rec = json.loads(out.read_text())
    split = json.loads(Path(str(outs) + ".json").read_text()) if rec["status"] == "ok" else None
    return rec, split, outs


def test_split_v2_handshake_and_measured_decode(native_runner, tiny_pte, tmp_path, split_token_file):
    """The v2 handshake with the token from --split-token-file (the token is in no message), and
    finding 12: decode_ms is measured (the reply frame is decoded and checked), not a written 0."""
    from edgeprobe_runner import codec

    srv = TinySplitServer("s3cret-token")
    try:
        rec, split, outs = _run_split(native_runner, tiny_pte, tmp_path, srv.port, "--split-token-file", split_token_file)
    finally:
        srv.close()
    assert rec["status"] == "ok", rec["error"]
    hello = srv.events[0][1]
    assert set(hello) == {"op", "nonce", "mac"} and "s3cret" not in json.dumps(srv.events)
    assert [e[0] for e in srv.events] == ["hello"] + ["run"] * 4 + ["closed"]
    its = split["iterations"]
    assert len(its) == 3
    for it in its:
        assert isinstance(it["decode_ms"], float) and it["decode_ms"] > 0, it
        assert it["server_ms"] == 0.25 and it["server_handle_ms"] == 0.3
        assert it["network_ms"] == pytest.approx(it["round_trip_ms"] - 0.25 - 0.01 - 0.02)
        assert it["e2e_ms"] >= it["head_ms"] + it["encode_ms"] + it["round_trip_ms"] + it["decode_ms"] - 1e-6
    head = codec.decode(outs.read_bytes())
    tail = codec.decode(Path(str(outs) + ".tail").read_bytes())
    torch.testing.assert_close(tail[0], head[0] * 2, rtol=0, atol=0)


def test_split_token_from_the_environment(native_runner, tiny_pte, tmp_path):
    srv = TinySplitServer("env-token")
    try:
        rec, split, _ = _run_split(native_runner, tiny_pte, tmp_path, srv.port, env={"EDGEPROBE_SPLIT_TOKEN": "env-token"},
                                   iterations=1)
    finally:
        srv.close()
    assert rec["status"] == "ok", rec["error"]


@pytest.mark.parametrize("case,code,word", [
    ("wrong token", "refused", "unauthorized: wrong token"),
    ("impostor", "unauthenticated_server", "did not prove it holds the token"),
    ("runner service", "split_protocol", "'runner' server"),
])
def test_split_handshake_failures(native_runner, tiny_pte, tmp_path, split_token_file, case, code, word):
    srv = TinySplitServer("other-token" if case == "wrong token" else "s3cret-token", prove=case != "impostor",
                          service="runner" if case == "runner service" else "split")
    try:
        rec, _, _ = _run_split(native_runner, tiny_pte, tmp_path, srv.port, "--split-token-file", split_token_file)
    finally:
        srv.close()
    assert word in _one_line_error(rec, code)
    # an impostor gets nothing after the hello: the runner checked its MAC first
    assert not [e for e in srv.events if e[0] == "run"]
    if case == "runner service":  # the wrong service is refused at the challenge, before any MAC is sent
        assert [e[0] for e in srv.events] == ["closed before hello"]


def _reply_with(**fields):
    def reply(req, frame):
        from edgeprobe_runner import codec

        payload = codec.encode([t * 2 for t in codec.decode(frame)], "fp32")
        header = {"ok": True, "size": len(payload), "server_ms": 0.25, "decode_ms": 0.01, "encode_ms": 0.02}
        header.update(fields)
        header = {k: v for k, v in header.items() if v is not None}
        return header, payload if isinstance(header.get("size"), int) and header["size"] == len(payload) else b""
    return reply


@pytest.mark.parametrize("fields,word", [
    ({"server_ms": None}, "'server_ms'"),  # finding 12: a missing field was read as 0.0
    ({"decode_ms": "fast"}, "'decode_ms'"),
    ({"size": 1e18}, "'size'"),  # finding 11: cast to size_t, then a 1e18-byte buffer (std::bad_alloc, abort)
    ({"size": -1}, "'size'"),
    ({"size": 2.5}, "'size'"),
    ({"size": 1e400}, "'size'"),  # JSON has no inf: the number overflows a double
])
def test_split_bad_server_replies(native_runner, tiny_pte, tmp_path, split_token_file, fields, word):
    if fields.get("size") == 1e400:
        raw = b'{"ok": true, "size": 1e400, "server_ms": 0.1, "decode_ms": 0, "encode_ms": 0}'
        srv = TinySplitServer("s3cret-token", reply=lambda req, frame: (raw, b""))
    else:
        srv = TinySplitServer("s3cret-token", reply=_reply_with(**fields))
    try:
        rec, _, _ = _run_split(native_runner, tiny_pte, tmp_path, srv.port, "--split-token-file", split_token_file,
                               iterations=1)
    finally:
        srv.close()
    assert word in _one_line_error(rec, "split_protocol")


def test_split_against_the_real_edgeprobe_serve(native_runner, tiny_pte, tmp_path, split_token_file):
    """The native client against `edgeprobe serve` itself (its v2 handshake in wire.py): a tail that
    doubles tiny_cnn's logits, loaded with the host's TailClient."""
    import sys

    from edgeprobe.split.server import TailClient
    from edgeprobe_runner import codec

    class Double(torch.nn.Module):
        def forward(self, x):
            return x * 2.0

    tail = torch.export.export(Double(), (torch.zeros(1, 10),))
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEPROBE_TOKEN", "EDGEPROBE_SERVE_TOKEN", "EDGEPROBE_SPLIT_TOKEN")}
    args = ["--host", "127.0.0.1", "--port", "0", "--token-file", str(split_token_file), "--device", "cpu", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-c", f"import sys; from edgeprobe.split.server import main; sys.exit(main({args!r}))"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.wait(timeout=30) is not None else ""
        port = int(json.loads(line)["listening"].rsplit(":", 1)[1])
        with TailClient("127.0.0.1", port, "s3cret-token", timeout_s=60) as c:
            assert c.load("n", tail)["ok"]
        rec, split, outs = _run_split(native_runner, tiny_pte, tmp_path, port, "--split-token-file", split_token_file)
        assert rec["status"] == "ok", rec["error"]
        assert all(it["decode_ms"] > 0 and it["server_ms"] > 0 for it in split["iterations"])
        torch.testing.assert_close(codec.decode(Path(str(outs) + ".tail").read_bytes())[0],
                                   codec.decode(outs.read_bytes())[0] * 2, rtol=1e-6, atol=1e-6)
        # and a wrong token is refused by the real server, in one line
        bad = tmp_path / "bad-token"
        bad.write_text("wrong\n")
        (tmp_path / "r.json").unlink()
        rec, _, _ = _run_split(native_runner, tiny_pte, tmp_path, port, "--split-token-file", bad, iterations=1)
        assert "wrong token" in _one_line_error(rec, "refused")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- peak memory from high-water marks (finding 13)


def test_native_peak_rss_from_high_water_marks(native_runner, tiny_pte):
    r = edgeprobe.bench(tiny_pte, iterations=3, warmup=1)
    assert r.ok, r.run.error
    m = r.run.memory
    assert m.hwm_reset is True and "clear_refs" in m.peak_rss_definition
    # the mark was reset to VmRSS just before the baseline: HWM == RSS then (give or take a page)
    assert 0 <= m.baseline_hwm_bytes - m.baseline_rss_bytes <= 64 << 10, m
    assert m.peak_rss_delta_bytes == m.peak_rss_bytes - m.baseline_hwm_bytes > 0


def test_python_runner_baseline_ignores_an_earlier_transient(tiny_pte, tmp_path):
    """In one process: 256 MiB touched and freed before the runner reads its baseline. Before, the
    delta was final VmHWM - baseline VmRSS, so that transient (not the model) was reported as the
    model's peak memory."""
    from edgeprobe.results import Memory
    from edgeprobe_runner import runner

    blob = bytearray(256 << 20)
    for i in range(0, len(blob), 4096):
        blob[i] = 1
    del blob
    args = runner.parse_args(["--model", str(tiny_pte.model_path), "--vectors", str(tiny_pte.vectors_path),
                              "--iterations", "2", "--warmup", "0"])
    rec = runner.measure(args)
    assert rec["status"] == "ok", rec["error"]
    m = Memory(**{k: rec["memory"][k] for k in ("baseline_rss_bytes", "baseline_hwm_bytes", "peak_rss_bytes",
                                                   "swap_bytes", "source", "hwm_reset", "peak_rss_definition")})
    assert m.hwm_reset is True
    assert 0 <= m.peak_rss_delta_bytes < 128 << 20, m  # the old definition gave >= 256 MiB here


def test_old_records_still_read():
    from edgeprobe.results import Memory, from_dict

    old = {"baseline_rss_bytes": 100, "baseline_hwm_bytes": 150, "peak_rss_bytes": 400, "swap_bytes": 0,
           "source": "/proc/self/status VmHWM"}
    m = from_dict(Memory, old)
    assert m.hwm_reset is None and m.peak_rss_definition is None and m.peak_rss_delta_bytes == 250
    assert from_dict(Memory, {**old, "baseline_hwm_bytes": None}).peak_rss_delta_bytes == 300
