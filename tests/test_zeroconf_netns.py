"""Zeroconf discovery and a bench across a real link: `edgeprobe runner serve` in one network
namespace, the host side in another, joined by a veth pair (tests/netns.py; root only, else skipped).
Also checks that the helper's link shaping is really applied."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pytest

from netns import (ShapingUnavailable, first_line, ping_rtts, require_netns, shaping_available,  # tests/ is on sys.path
                   tcp_transfer_seconds, veth_pair)

pytestmark = pytest.mark.real_peer("netns")

TOKEN = "netns-s3cret"

_DISCOVER = """
import json, sys
from edgeprobe.devices.tcp import discover
print(json.dumps(discover(timeout_s=float(sys.argv[2]), interfaces=[sys.argv[1]])))
"""


@pytest.fixture(autouse=True)
def _needs_netns():
    require_netns()


@pytest.mark.real_peer("zeroconf")
def test_runner_discovered_over_zeroconf_and_benched_from_another_namespace(tmp_path, native_runner, tiny_pte):
    name = f"ep-netns-{os.getpid()}-{secrets.token_hex(2)}"
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEPROBE_TOKEN", "EDGEPROBE_ZEROCONF_INTERFACES")}
    with veth_pair(prefix="epzc") as net:
        server = net.popen(
            net.ns_a,
            [sys.executable, "-m", "edgeprobe", "runner", "serve", "--host", net.addr_a, "--port", "0",
             "--token", TOKEN, "--name", name, "--workdir", tmp_path / "device", "--native-runner", native_runner],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        info = json.loads(first_line(server, 60))
        host, port = info["listening"].rsplit(":", 1)
        assert host == net.addr_a and info["zeroconf"]

        # The host side's discovery, in namespace B, listening on B's end of the veth only.
        t0 = time.monotonic()
        p = net.run(net.ns_b, [sys.executable, "-c", _DISCOVER, net.addr_b, "3"], capture_output=True,
                    text=True, timeout=90, env=env)
        assert p.returncode == 0, p.stderr
        found = {f["name"]: f for f in json.loads(p.stdout.strip().splitlines()[-1])}
        assert name in found, f"{name} not discovered from {net.ns_b}: {found}"
        me = found[name]
        assert me["host"] == net.addr_a and me["port"] == port and "native" in me["runtimes"]
        discovery_s = time.monotonic() - t0

        # A real bench by the runner's name from B: resolved over zeroconf on B's interface
        # (EDGEPROBE_ZEROCONF_INTERFACES), then run over TCP with the token.
        out = tmp_path / "result.json"
        p = net.run(net.ns_b, [sys.executable, "-m", "edgeprobe", "bench", "tiny_cnn", "--device", name,
                               "--token", TOKEN, "--iterations", "3", "--min-seconds", "0", "--warmup", "1",
                               "--json", out],
                    capture_output=True, text=True, timeout=180,
                    env={**env, "EDGEPROBE_ZEROCONF_INTERFACES": net.addr_b})
        assert p.returncode == 0, p.stdout + p.stderr
        rec = json.loads(out.read_text())
        text = json.dumps(rec)
        assert rec["run"]["status"] == "ok", rec["run"].get("error")
        assert rec["device"]["transport"] == "tcp" and f"tcp:{net.addr_a}:{port}" in text
        assert rec["run"]["runner"]["flavor"] == "native" and len(rec["run"]["timing"]["iteration_ns"]) == 3
        assert server.poll() is None, server.stderr.read()
        print(f"discovery from the other namespace: {discovery_s:.1f} s")


def test_netem_rate_and_delay_are_applied_both_ways():
    """With netem: the delay and the rate are really applied. Without it (this kernel has no
    sch_netem): a delay is refused with the reason, never silently dropped; the userspace link
    emulator (tests/test_linkemu.py) is what applies delays there."""
    ok, why = shaping_available(delay=True)
    if not ok:
        assert "netem" in why, why
        with pytest.raises(ShapingUnavailable, match="20 ms delay needs tc netem"):
            with veth_pair(prefix="epne", rate_mbit=8, delay_ms=20):
                pass
        return
    with veth_pair(prefix="epne", rate_mbit=8, delay_ms=20) as net:
        assert net.shaping == "netem"
        rtt = min(ping_rtts(net, net.ns_a, net.addr_b, count=3))
        assert rtt >= 0.040, f"RTT {rtt * 1000:.1f} ms: the 20 ms delay is not applied on both ends"
        secs = tcp_transfer_seconds(net, net.ns_a, net.ns_b, net.addr_b, 1 << 20)
        assert secs >= 0.9, f"1 MB in {secs:.2f} s: faster than 8 Mbit/s"
        net.set_shaping(None, 5)  # a new profile mid-test: delay only
        rtt = min(ping_rtts(net, net.ns_b, net.addr_a, count=3))
        assert 0.009 <= rtt < 0.040, f"RTT {rtt * 1000:.1f} ms after switching to a 5 ms delay"


def test_rate_limit_is_applied_and_can_be_changed():
    """Rate only: netem, or tbf on kernels without netem."""
    ok, why = shaping_available(delay=False)
    if not ok:
        pytest.skip(why)
    with veth_pair(prefix="eprt", rate_mbit=8) as net:
        assert net.shaping in ("netem", "tbf")
        for src, dst, addr in ((net.ns_a, net.ns_b, net.addr_b), (net.ns_b, net.ns_a, net.addr_a)):
            secs = tcp_transfer_seconds(net, src, dst, addr, 1 << 20)
            assert secs >= 0.9, f"1 MB {src} -> {dst} in {secs:.2f} s: faster than 8 Mbit/s"
        assert net.set_shaping(None, None) is None
        secs = tcp_transfer_seconds(net, net.ns_a, net.ns_b, net.addr_b, 1 << 20)
        assert secs < 0.5, f"1 MB in {secs:.2f} s with the shaping removed"
