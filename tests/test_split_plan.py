"""plan_split end to end on loopback: real per-operator ETDump costs from the local device, a real
`edgeprobe serve` process, every candidate run end to end (head .pte on the device-side split client,
tail on the server), regret and prediction error reported."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeprobe.errors import UsageError
from edgeprobe.split import parse_rate_bps, parse_time_ms, plan_split

TOKEN = "split-test-token"


class SkipNet(nn.Module):
    """A residual block and a two-branch head: a DAG, not a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        z = torch.relu(self.b(torch.relu(self.a(y))) + y)
        return self.fc(self.pool(z).flatten(1))


@contextlib.contextmanager
def _serve(*extra: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "edgeprobe", "serve", "--host", "127.0.0.1", "--port", "0",
                          "--token", TOKEN, *extra], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = json.loads(p.stdout.readline())
        yield line["listening"]
    finally:
        p.terminate()
        p.wait(timeout=30)


CORES = sorted(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def tail_server():
    """On its own core when there are two or more: the device half then gets the others (colocation)."""
    with _serve(*(["--cpus", str(CORES[-1])] if len(CORES) > 1 else ["--threads", "1"])) as where:
        yield where


def _regret_from_rows(plan):
    """The regret recomputed from the rows: the chosen cut's measured p50 over the smallest measured p50."""
    measured = [r for r in plan.candidates if r.measured_e2e_p50_ms is not None]
    best = min(measured, key=lambda r: r.measured_e2e_p50_ms)
    mine = next(r for r in measured if r.device_node_names == plan.chosen.device_node_names)
    return mine.measured_e2e_p50_ms / best.measured_e2e_p50_ms, best.label


def test_units_parse():
    assert parse_rate_bps("5.85mbit") == pytest.approx(5.85e6)
    assert parse_rate_bps("800kbit") == pytest.approx(8e5)
    assert parse_time_ms("40ms") == 40 and parse_time_ms("0.03s") == pytest.approx(30)
    with pytest.raises(UsageError, match="bandwidth"):
        parse_rate_bps("fast")


def test_plan_and_verify_every_candidate_on_a_dag(tail_server, native_runner, tmp_path):
    torch.manual_seed(0)
    plan = plan_split(SkipNet().eval(), input_shape=(1, 3, 16, 16), server=f"tcp:{tail_server}", token=TOKEN,
                      uplink="50mbit", downlink="50mbit", rtt="1ms", iterations=5, warmup=1, verify=True)
    rows = plan.candidates
    kinds = {r.kind for r in rows}
    assert {"device-only", "cloud-only", "split"} <= kinds
    assert all(r.error is None for r in rows), [r.error for r in rows if r.error]
    assert all(r.measured_e2e_p50_ms is not None and r.measured_e2e_p50_ms > 0 for r in rows)
    assert all(r.sqnr_db > 100 for r in rows)  # fp32 everywhere: split outputs equal the unsplit model
    regret, best = _regret_from_rows(plan)
    assert plan.regret == pytest.approx(regret, rel=1e-12) and plan.best_measured == best
    # --split-runner auto: the runtime path the device costs were measured with (the native runner)
    assert plan.split_runner == "native"
    assert plan.device_only.measured_e2e_p50_ms and plan.cloud_only.measured_e2e_p50_ms  # the verified rows
    assert plan.per_message_overhead_bytes > 0  # measured against the server
    assert plan.request_overhead_ms > 0  # measured: the server's handling + the client's codec of an echo
    assert all(r.predicted_overhead_ms == plan.request_overhead_ms for r in rows if r.kind != "device-only")
    # confirmation: the heads of the 3 best-predicted splits (and the chosen one) timed on the device, and
    # the choice is the best total with those measured heads
    confirmed = [r for r in rows if r.confirmed_total_ms is not None]
    assert len([r for r in confirmed if r.kind == "split"]) >= min(3, sum(r.kind == "split" for r in rows))
    # cloud-only has no head: nothing measured, so no number (it was a stored 0.0), and the reason
    assert plan.cloud_only.measured_head_ms is None and "nothing runs on the device" in plan.cloud_only.confirm_source
    assert plan.cloud_only.confirmed_total_ms == plan.cloud_only.predicted_total_ms
    # device-only: the per-node costs were scaled to one bench of the whole model, so its prediction is that
    # bench; its confirmation is a bench of its own (it used to be the same number restated)
    d = plan.device_only
    assert d.measured_head_ms > 0 and d.measured_head_ms != d.predicted_device_ms
    assert "bench of its own" in d.confirm_source and "by construction" in d.confirm_source
    for r in confirmed:
        if r.kind != "cloud-only":
            assert r.measured_head_ms > 0 and r.confirm_source
            assert r.confirmed_total_ms == pytest.approx(r.predicted_total_ms - r.predicted_device_ms + r.measured_head_ms)
    assert plan.chosen.confirmed_total_ms == min(r.confirmed_total_ms for r in confirmed)
    # the network part of each prediction, recomputed from the row's bytes and the plan's link: payload plus one
    # framing per message, with 52 B of TCP/IP headers per 1448 B, at the link rate; RTT + software time once
    wire = 1 + 52 / 1448
    for r in rows:
        if r.kind == "device-only":
            assert r.predicted_uplink_ms == r.predicted_rtt_ms == r.predicted_overhead_ms == 0
            continue
        frame = plan.per_message_overhead_bytes
        assert r.predicted_uplink_ms == pytest.approx((r.bytes_up + frame) * wire * 8000 / plan.uplink_bps)
        assert r.predicted_rtt_ms == plan.rtt_ms == 1.0
        assert r.predicted_total_ms == pytest.approx(
            r.predicted_device_ms + r.predicted_uplink_ms + r.predicted_server_ms + r.predicted_downlink_ms + 1.0
            + plan.request_overhead_ms)
    data = json.loads(plan.to_json())
    assert data["schema_version"] == 3 and data["chosen"]["label"] == plan.chosen.label
    # the link was probed over the same server (loopback: far faster than the declared 50 Mbit/s and 1 ms)
    ml = plan.measured_link
    assert ml["path"] == tail_server and 0 < ml["rtt_ms"] < 5 and ml["uplink_bps"] > 100e6 and ml["downlink_bps"] > 100e6
    assert plan.declared_link == {"uplink_bps": 50e6, "downlink_bps": 50e6, "rtt_ms": 1.0}
    assert plan.network_source == "declared" and plan.uplink_bps == 50e6
    assert any(n.startswith("WARNING: the link measured") and "--network measured" in n for n in plan.notes), plan.notes
    if len(CORES) > 1:  # the server keeps to its core, so the device half was pinned to the others
        assert plan.colocation["same_host"] and plan.colocation["pinned"], plan.colocation
        assert plan.colocation["server_cpus"] == CORES[-1:] and plan.colocation["device_cpus"] == CORES[:-1]
        assert not any("share this host's cores" in n for n in plan.notes)
    assert plan.policy and plan.policy[0][0] <= plan.uplink_bps


def test_cli_split_prints_plan_and_policy(tmp_path, native_runner):
    out = tmp_path / "plan.json"
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "split", "tiny_cnn", "--uplink", "1.1mbit", "--rtt", "40ms",
                        "--iterations", "3", "--warmup", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "220"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "policy" in p.stdout and "device-only" in p.stdout and "predicted" in p.stdout
    plan = json.loads(out.read_text())
    assert plan["server"] is None and "this host" in plan["cost_sources"]["server"]
    assert math.isclose(plan["uplink_bps"], 1.1e6)
    # no server: framing and software time were not measured, so they are null (they were stored as 0), and
    # there is no link to probe
    assert plan["per_message_overhead_bytes"] is None and plan["request_overhead_ms"] is None
    assert plan["measured_link"] is None and plan["colocation"] is None
    assert any("not measured" in n for n in plan["notes"])
    cloud = plan["cloud_only"]
    assert cloud["measured_head_ms"] is None and "nothing runs on the device" in cloud["confirm_source"]


def test_bad_requests_are_refused_clearly():
    with pytest.raises(UsageError, match="--verify .* needs --server"):
        plan_split("tiny_cnn", verify=True)
    with pytest.raises(UsageError, match="encoding"):
        plan_split("tiny_cnn", encoding="bf8")
    with pytest.raises(UsageError, match="per-operator device energy meter"):
        plan_split("tiny_cnn", objective="energy")


@pytest.mark.parametrize("where", ["local", "adb", "tcp"])
def test_native_runner_split_mode_verifies_every_candidate(tail_server, native_runner, tmp_path, monkeypatch, where):
    """The C++ runner's split mode is the device half: on local, over the test adbd (which speaks the
    real ADB protocol; the runner bundle is pushed to it and run through its shell), and on a
    `edgeprobe runner serve` TCP runner (its own token, not the split server's). Every
    candidate runs end to end, in int8 at the cut (the runner's own codec), and its assembled outputs
    match the unsplit model to int8's precision."""
    if where == "adb":
        from edgeprobe.native import install_dir

        if not (install_dir() / "bin" / "edgeprobe_runner").is_file():
            pytest.skip("the ADB path deploys the installed runner bundle (`edgeprobe runner build`)")
        from adbd import TestAdbd

        monkeypatch.setenv("EDGEPROBE_ADB_KEY", str(tmp_path / "keys" / "adbkey"))
        ctx = TestAdbd(tmp_path / "dev")
    elif where == "tcp":
        ctx = _runner_server(tmp_path, native_runner)
    else:
        ctx = contextlib.nullcontext()
    torch.manual_seed(0)
    with ctx as d:
        device = {"adb": lambda: f"adb:127.0.0.1:{d.port}", "tcp": lambda: f"tcp:127.0.0.1:{d}",
                  "local": lambda: "local"}[where]()
        plan = plan_split(SkipNet().eval(), input_shape=(1, 3, 16, 16), device=device, server=f"tcp:{tail_server}",
                          token=TOKEN, device_token="runner-token", uplink="50mbit", downlink="50mbit", rtt="1ms",
                          iterations=3, warmup=1, encoding="int8", verify=True, split_runner="native", confirm=1)
        if where == "adb":
            assert any("--split-server" in c for c in d.shell_log), d.shell_log[-3:]
    rows = plan.candidates
    assert {"device-only", "cloud-only", "split"} <= {r.kind for r in rows}
    assert all(r.error is None for r in rows), [r.error for r in rows if r.error]
    assert all(r.measured_e2e_p50_ms > 0 for r in rows)
    # int8 at the cut (device-only sends nothing: exact); 8-bit quantization of one activation keeps
    # the final output well above 25 dB on this model
    for r in rows:
        assert r.sqnr_db > (100 if r.kind == "device-only" else 25), (r.label, r.sqnr_db)
    regret, best = _regret_from_rows(plan)
    assert plan.regret == pytest.approx(regret, rel=1e-12) and plan.best_measured == best


@contextlib.contextmanager
def _runner_server(tmp_path, native_runner):
    p = subprocess.Popen([sys.executable, "-m", "edgeprobe", "runner", "serve", "--host", "127.0.0.1", "--port", "0",
                          "--token", "runner-token", "--name", f"ep-split-{os.getpid()}", "--workdir",
                          str(tmp_path / "tcpdev"), "--native-runner", str(native_runner)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        yield int(json.loads(line)["listening"].rsplit(":", 1)[1])
    finally:
        p.terminate()
        p.wait(timeout=20)


def test_native_codec_frames_match_python_codec(native_runner, tmp_path):
    """The runner's hand-written codec against edgeprobe_runner.codec, byte for byte where it matters: a
    loopback stand-in for the server takes the runner's run requests; each frame has exactly the size
    codec.encoded_bytes predicts and decodes (in Python) to what Python's own encoder gives: the same
    int8 scale, zero point and values, the same fp16 rounding and saturation."""
    import socket
    import threading

    from edgeprobe.lower import lower
    from edgeprobe.models import ModelSpec
    from edgeprobe_runner import codec
    from edgeprobe_runner.server import recv_exact, recv_msg, send_msg
    from edgeprobe_runner.wire import server_handshake

    class Two(nn.Module):
        def forward(self, x):
            return x * 3.0 - 1.0, (x * 6.0).exp()  # the second one goes past fp16's 65504

    x = torch.linspace(-2.0, 2.0, 2 * 3 * 5).reshape(2, 3, 5)
    art = lower(ModelSpec("two-outputs", (x,), module=Two().eval()))
    got: dict[str, bytes] = {}
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(3):
            conn, _ = srv.accept()
            with conn:
                server_handshake(conn, "t", "split", dict)  # protocol v2: challenge, the runner's MAC, ours
                conn.settimeout(60)
                while True:
                    try:
                        req = recv_msg(conn)
                    except Exception:  # noqa: BLE001 - the runner closed the connection
                        break
                    payload = recv_exact(conn, req["size"])
                    got[req["encoding"]] = payload
                    back = codec.encode([t * 2 for t in codec.decode(payload)], "fp32")
                    send_msg(conn, {"ok": True, "size": len(back), "server_ms": 0.1, "decode_ms": 0.0,
                                    "encode_ms": 0.0, "handle_ms": 0.2}, back)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    want = [t.detach() for t in Two()(x)]
    port = srv.getsockname()[1]
    for enc in ("fp32", "fp16", "int8"):
        out = tmp_path / f"{enc}.bin"
        p = subprocess.run([str(native_runner), "--model", str(art.model_path), "--vectors", str(art.vectors_path),
                            "--warmup", "0", "--iterations", "1", "--output", str(tmp_path / f"{enc}.json"),
                            "--split-server", f"127.0.0.1:{port}", "--split-name", "n",
                            "--split-encoding", enc, "--split-outputs", str(out)],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "EDGEPROBE_SPLIT_TOKEN": "t"})
        assert p.returncode == 0, p.stderr
        rec = json.loads((tmp_path / f"{enc}.json").read_text())
        assert rec["status"] == "ok", rec["error"]
        frame = got[enc]
        assert len(frame) == codec.encoded_bytes([(t.shape, t.dtype) for t in want], enc)
        # the reference: Python's encoder on the device's own outputs (the fp32 frame: XNNPACK's exp
        # differs from eager torch's by an ulp or so)
        device_out = codec.decode(got["fp32"])
        torch.testing.assert_close(device_out[0], want[0], rtol=1e-5, atol=1e-5)
        for mine, ref in zip(codec.decode(frame), codec.decode(codec.encode(device_out, enc)), strict=True):
            torch.testing.assert_close(mine, ref, rtol=0, atol=0)
        split_rec = json.loads(Path(str(out) + ".json").read_text())
        assert split_rec["iterations"][0]["server_ms"] == 0.1 and split_rec["head_outputs_count"] == 2
        tail = codec.decode(Path(str(out) + ".tail").read_bytes())
        torch.testing.assert_close(tail[0], codec.decode(frame)[0] * 2, rtol=0, atol=0)
    th.join(timeout=10)
    srv.close()


def test_network_measured_plans_with_the_probed_link(tail_server):
    """A declared 4G link against a server on loopback: the probe measures the real one; with
    network="measured" the plan uses it (and keeps the declared one beside it, with the difference)."""
    torch.manual_seed(0)
    plan = plan_split(SkipNet().eval(), input_shape=(1, 3, 16, 16), server=f"tcp:{tail_server}", token=TOKEN,
                      uplink="5.85mbit", downlink="20mbit", rtt="30ms", iterations=3, warmup=1, confirm=0,
                      network="measured")
    ml = plan.measured_link
    assert plan.network_source == "measured"
    assert (plan.uplink_bps, plan.downlink_bps, plan.rtt_ms) == (ml["uplink_bps"], ml["downlink_bps"], ml["rtt_ms"])
    assert plan.declared_link == {"uplink_bps": 5.85e6, "downlink_bps": 20e6, "rtt_ms": 30.0}
    assert ml["rtt_ms"] < 5 and ml["uplink_bps"] > 100e6  # loopback, not 4G
    assert plan.cloud_only.predicted_rtt_ms == ml["rtt_ms"]
    note = next(n for n in plan.notes if n.startswith("planned with the measured link"))
    assert "RTT declared 30 ms" in note and "uplink declared 5.85 Mbit/s" in note
    assert not any(n.startswith("WARNING: the link") for n in plan.notes)
    with pytest.raises(UsageError, match="--network measured probes the link"):
        plan_split("tiny_cnn", network="measured")


def test_link_compare_flags_only_real_differences():
    from edgeprobe.split.link import compare

    declared = {"uplink_bps": 10e6, "downlink_bps": 20e6, "rtt_ms": 30.0}
    assert compare(declared, {"uplink_bps": 15e6, "downlink_bps": 11e6, "rtt_ms": 40.0}) == []
    got = compare(declared, {"uplink_bps": 4e6, "downlink_bps": 20e6, "rtt_ms": 0.2})
    assert got == ["uplink declared 10 Mbit/s, measured 4 Mbit/s (x0.4)", "RTT declared 30 ms, measured 0.2 ms"]
    # a sub-millisecond RTT twice another is no difference worth a warning; an unresolved rate is not compared
    assert compare({"uplink_bps": 1e9, "downlink_bps": 1e9, "rtt_ms": 0.1},
                   {"uplink_bps": None, "downlink_bps": 1.5e9, "rtt_ms": 0.3}) == []


@pytest.mark.skipif(len(CORES) < 2, reason="needs two cores to give the server one of its own")
def test_serve_cpus_keeps_the_server_on_its_cores_and_says_so():
    from edgeprobe.split.server import TailClient

    with _serve("--cpus", str(CORES[-1])) as where:
        host, port = where.rsplit(":", 1)
        with TailClient(host, int(port), TOKEN) as c:
            info = c.server_info()
    assert info["cpus"] == CORES[-1:] and info["threads"] == 1
    assert info["host_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_pinned_block_pins_the_processes_it_starts():
    from edgeprobe.split import _pinned

    probe = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
    with _pinned(CORES[:1]):
        inside = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    after = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    assert inside == str(CORES[:1]) and after == str(CORES)


def test_colocation_pins_off_a_pinned_server_and_warns_about_a_shared_one():
    from edgeprobe.split import _colocation

    me = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    addr = ("127.0.0.1", 7100)
    shared = _colocation("local", {"host_id": me, "cpus": CORES, "threads": len(CORES)}, addr)
    assert shared["same_host"] and not shared["pinned"] and "share this host's cores" in shared["warning"]
    assert _colocation("local", {"host_id": "another-host", "cpus": [0]}, ("10.0.0.2", 7100)) == {
        "same_host": False, "how": "the server's host_id (kernel boot id) differs from this host's", "pinned": False}
    assert "does not place" in _colocation("adb:1.2.3.4:5555", {"host_id": me, "cpus": [0]}, addr)["note"]
    old_server = _colocation("local", {"threads": 2}, addr)  # no host_id, no cpus: loopback says same host
    assert old_server["same_host"] and not old_server["pinned"] and old_server["warning"].startswith("WARNING")
    if len(CORES) > 1:
        off = _colocation("local", {"host_id": me, "cpus": CORES[-1:], "threads": 1}, addr)
        assert off["pinned"] and off["device_cpus"] == CORES[:-1] and off["device_threads"] == len(CORES) - 1
        assert "warning" not in off
        over = _colocation("local", {"host_id": me, "cpus": CORES[-1:], "threads": 4}, addr)
        assert over["pinned"] and "oversubscribe" in over["warning"]


def test_a_plan_opens_the_device_once_and_measures_everything_through_it(native_runner, monkeypatch):
    """The device costs (profile + bench) and every confirmed head go through one session: the device
    opened and the runner resolved once, closed at the end; the progress messages of the old
    api.profile/api.bench path are still said."""
    from edgeprobe.split import device as device_module

    opened = []
    real = device_module.open_session

    def counting(*args, **kwargs):
        opened.append(real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(device_module, "open_session", counting)
    said: list[str] = []
    plan = plan_split("tiny_cnn", iterations=2, warmup=1, confirm=2, progress=said.append)
    assert len(opened) == 1, opened
    session = opened[0]
    heads = [r for r in plan.candidates if r.measured_head_ms is not None or r.confirm_error is not None]
    assert heads and all(r.confirm_error is None for r in heads), [r.confirm_error for r in heads]
    assert session.stats.measurements == 2 + len(heads)  # portable profile, XNNPACK bench, the heads
    assert session.stats.deploys == 1 and session._closed
    assert any(m.startswith("profiling on local: 2 iterations with ETDump") for m in said), said
    assert any(m.startswith("measuring on local (native runner): 1 warm-up + 10 iterations") for m in said), said
