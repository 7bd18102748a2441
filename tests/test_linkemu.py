"""The userspace link emulator (tests/linkemu.py via netns.emulated_link) against its own model:
ICMP round trips equal twice the one-way delay, TCP transfers take the serialisation time of their IP
packets plus the delay, and shaping changes take effect on a running link. Root only (else skipped).

Tolerances are loose on purpose (a loaded 2-core VM); the point is that the delay and the rate are
really applied, each within a few ms or %, which is what the split tests build on."""

from __future__ import annotations

import statistics

import pytest

from netns import emulated_link, emulation_available, ping_rtts, tcp_transfer_seconds  # tests/ is on sys.path

pytestmark = pytest.mark.real_peer("netns")


@pytest.fixture(autouse=True)
def _needs_emulation():
    ok, why = emulation_available()
    if not ok:
        pytest.skip(why)


def _transfer_model_s(nbytes: int, rate_mbit: float, delay_ms: float) -> float:
    """Bytes in 1448 B TCP segments with 52 B of headers each, then the last one's delay (the sink's
    acknowledgement comes back after the same delay; the measured time includes the handshake's RTT
    only partly: connect returns after one RTT)."""
    return nbytes * 1500 / 1448 * 8 / (rate_mbit * 1e6) + 2 * delay_ms / 1e3


def test_delay_rate_and_reshaping():
    with emulated_link(prefix="eptl", rate_mbit=8.0, delay_ms=20.0) as link:
        rtts = ping_rtts(link, link.ns_a, link.addr_b, count=5)
        assert 0.040 <= statistics.median(rtts) <= 0.046, rtts

        nbytes = 1_000_000
        seconds = tcp_transfer_seconds(link, link.ns_a, link.ns_b, link.addr_b, nbytes)
        want = _transfer_model_s(nbytes, 8.0, 20.0)
        assert abs(seconds - want) / want < 0.08, (seconds, want)

        link.set_shaping(20.0, 2.5)  # faster, shorter: the running emulator takes it at once
        rtts = ping_rtts(link, link.ns_b, link.addr_a, count=5)
        assert 0.005 <= statistics.median(rtts) <= 0.010, rtts
        seconds = tcp_transfer_seconds(link, link.ns_b, link.ns_a, link.addr_a, nbytes)
        want = _transfer_model_s(nbytes, 20.0, 2.5)
        assert abs(seconds - want) / want < 0.10, (seconds, want)
    c = link.counters
    assert c["a_to_b"]["bytes"] > nbytes and c["b_to_a"]["bytes"] > nbytes, c
    assert c["a_to_b"]["drops"] == 0 and c["b_to_a"]["drops"] == 0, c


def test_unshaped_link_still_forwards():
    with emulated_link(prefix="eptu") as link:
        assert link.shaping is None
        assert statistics.median(ping_rtts(link, link.ns_a, link.addr_b, count=3)) < 0.02
