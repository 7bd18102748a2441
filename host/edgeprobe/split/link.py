"""The link to the server: the declared one's units, and the real one probed before a plan trusts it.

A plan's network costs come from ``--uplink``/``--downlink``/``--rtt``: what the user says the device's
link is. A plan verified over another link (a server on loopback with a declared 3G link, say) would
report prediction errors of hundreds of percent, and a regret, for a network it never used. So the
link is measured first, over a connection to ``edgeprobe serve`` on the address the device uses, with
the server's ordinary ``run`` op and three tiny programs (no weights):

- echo: one float each way. Its round trip, minus the server's own handling (``handle_ms``, which
  the server measures from the request's last byte to its reply), is the measured RTT;
- up: ``n`` floats in, one back. Its time minus the echo's is the time of ``n`` more payload bytes
  going up: uplink goodput; the same with ``n`` floats back for the downlink.

Each size runs ``warmup`` untimed times (the connection's congestion window opens) then ``runs`` timed
ones, median. The first size is small (64 KiB: half a second at 1 Mbit/s); when it is over in less
than ``target_ms`` the probe is repeated with a size that takes about that long, up to 4 MiB. The
rates are reported as goodput and as the link rate the planner's model uses (goodput x (1 + packet
overhead / MSS): the model charges TCP/IP headers on top of the payload), so ``--network measured``
predicts what this probe saw. Socket, kernel and Python time per byte at both ends is part of what it
measures, as it is part of every real request.
"""

from __future__ import annotations

import re
import statistics
import time
from typing import Any, Callable, Optional

from edgeprobe.errors import TransportError, UsageError

MSS_BYTES = 1448

_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmg]?)(bit|bps|b)?(?:/s)?\s*$", re.I)
_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$", re.I)


def parse_rate_bps(text: str) -> float:
    """``5.85mbit`` / ``20Mbps`` / ``800kbit`` / ``1e6`` -> bits per second (tc's units: k = 1000)."""
    m = _RATE.match(str(text))
    if not m:
        raise UsageError(f"bandwidth {text!r}: use e.g. 5.85mbit, 800kbit or 1gbit")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    if value <= 0:
        raise UsageError(f"bandwidth {text!r} must be positive")
    return value


def parse_time_ms(text: str) -> float:
    m = _TIME.match(str(text))
    if not m:
        raise UsageError(f"time {text!r}: use e.g. 40ms, 0.04s or 500us")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, None: 1.0}[(m.group(2) or "ms").lower()]


def _programs():
    import torch

    class _Echo(torch.nn.Module):
        def forward(self, x):
            return x * 1.0

    class _Up(torch.nn.Module):  # n floats in, one float out
        def forward(self, x):
            return x[:1] * 1.0

    class _Down(torch.nn.Module):  # one float in, n floats out
        def __init__(self, n: int) -> None:
            super().__init__()
            self.n = n

        def forward(self, x):
            return x.expand(self.n) * 1.0

    return torch, _Echo, _Up, _Down


def _times(client, name: str, x, runs: int, warmup: int) -> tuple[list[float], dict[str, Any]]:
    """Per run: the round trip minus the server's handling (the network's part and the sockets')."""
    out: list[float] = []
    for i in range(warmup + runs):
        client.run(name, [x])
        if client.last["handle_ms"] is None:
            raise TransportError("the split server does not report handle_ms, so the link cannot be told apart "
                                 "from its handling time; update edgeprobe on the server")
        if i >= warmup:
            out.append(client.last["round_trip_ms"] - client.last["handle_ms"])
    return out, dict(client.last)


def probe_link(client, name: str, *, packet_overhead_bytes: int = 52, runs: int = 3, warmup: int = 1,
               first_bytes: int = 64 << 10, max_bytes: int = 4 << 20, target_ms: float = 100.0) -> dict[str, Any]:
    """Measure RTT and goodput both ways over ``client`` (a ``TailClient``), loading the probe programs
    under ``name`` (the plan's one program name). Returns a dict (``measured_link`` of the plan):
    ``rtt_ms``, ``uplink_bps``/``downlink_bps`` (link rates in the planner's model),
    ``uplink_goodput_bps``/``downlink_goodput_bps``, the probe sizes and the raw samples; a direction
    that the largest probe could not resolve (its time within the echo's) is None with the reason in
    ``unresolved``."""
    torch, Echo, Up, Down = _programs()
    t_start = time.monotonic()
    one = torch.zeros(1)
    client.load(name, torch.export.export(Echo(), (one,)))
    echo, echo_last = _times(client, name, one, max(runs, 9), warmup + 1)
    rtt = statistics.median(echo)
    out: dict[str, Any] = {"path": client.where, "rtt_ms": rtt, "rtt_samples_ms": echo,
                           "packet_overhead_bytes": packet_overhead_bytes, "mss_bytes": MSS_BYTES,
                           "runs": runs, "warmup": warmup, "unresolved": []}
    for direction in ("uplink", "downlink"):
        n_bytes = first_bytes
        while True:
            n = max(2, n_bytes // 4)
            if direction == "uplink":
                x = torch.zeros(n)
                client.load(name, torch.export.export(Up(), (x,)))
            else:
                x = one
                client.load(name, torch.export.export(Down(n), (one,)))
            samples, last = _times(client, name, x, runs, warmup)
            key = "payload_up" if direction == "uplink" else "payload_down"
            extra_bytes = last[key] - echo_last[key]
            t_ms = statistics.median(samples) - rtt
            if t_ms >= target_ms or n_bytes >= max_bytes:
                break
            # long enough to stand clear of the RTT's jitter, short enough for a slow link
            grow = target_ms / max(t_ms, target_ms / 64)
            n_bytes = int(min(max_bytes, max(2 * n_bytes, n_bytes * grow)))
        out[f"{direction}_probe_bytes"] = extra_bytes
        out[f"{direction}_samples_ms"] = samples
        if t_ms <= 0.02 * max(rtt, 0.05):
            out[f"{direction}_goodput_bps"] = out[f"{direction}_bps"] = None
            out["unresolved"].append(f"{direction}: {extra_bytes:,} more bytes took no measurable time beyond the "
                                     f"echo's {rtt:.3f} ms")
            continue
        goodput = extra_bytes * 8000.0 / t_ms
        out[f"{direction}_goodput_bps"] = goodput
        out[f"{direction}_bps"] = goodput * (1.0 + packet_overhead_bytes / MSS_BYTES)
    out["probe_s"] = time.monotonic() - t_start
    out["method"] = (f"echo of 1 float ({max(runs, 9)} runs) for the RTT; {out['uplink_probe_bytes']:,} B up and "
                     f"{out['downlink_probe_bytes']:,} B down for the rates, {warmup} warm-up + {runs} runs each, "
                     "medians, the server's handle_ms taken out; rates = goodput x (1 + "
                     f"{packet_overhead_bytes}/{MSS_BYTES}) (the model's TCP/IP headers)")
    return out


def _mbit(bps: Optional[float]) -> str:
    return "unresolved" if bps is None else f"{bps / 1e6:.3g} Mbit/s"


def compare(declared: dict[str, float], measured: dict[str, Any], *, rate_factor: float = 2.0,
            rtt_factor: float = 2.0, rtt_slack_ms: float = 1.0) -> list[str]:
    """What differs between the declared link and the measured one: a rate off by more than
    ``rate_factor`` either way, an RTT off by more than ``rtt_factor`` either way *and* by more than
    ``rtt_slack_ms`` (so that 0.1 vs 0.2 ms on loopback is not a difference). One line per quantity."""
    out: list[str] = []
    for key, what in (("uplink_bps", "uplink"), ("downlink_bps", "downlink")):
        d, m = declared[key], measured.get(key)
        if m is None:
            continue
        if m > rate_factor * d or m < d / rate_factor:
            out.append(f"{what} declared {_mbit(d)}, measured {_mbit(m)} (x{m / d:.3g})")
    d, m = declared["rtt_ms"], measured.get("rtt_ms")
    if m is not None and abs(m - d) > rtt_slack_ms and (m > rtt_factor * d or m < d / rtt_factor):
        out.append(f"RTT declared {d:g} ms, measured {m:.3g} ms")
    return out


def measure_link(client, addr, dev_addr, token: str, prog: str, packet_overhead_bytes: int, device: str,
                 say: Callable[[str], None]) -> dict[str, Any]:
    """The link probe over the device's way to the server (``dev_addr``): the plan's own connection
    when that is the same address, else a second one. From this host: for a device on another
    machine it is this host's path, which the record says."""
    from edgeprobe.split.server import TailClient

    say(f"probing the link to {dev_addr[0]}:{dev_addr[1]} (RTT, throughput both ways)")
    other = None
    try:
        c = client
        if tuple(dev_addr) != tuple(addr):
            other = c = TailClient(dev_addr[0], dev_addr[1], token)
        out = probe_link(c, prog, packet_overhead_bytes=packet_overhead_bytes)
    except Exception as exc:  # noqa: BLE001 - the plan goes on with the declared link, and says why
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {"path": f"{dev_addr[0]}:{dev_addr[1]}", "error": f"{type(exc).__name__}: {msg}"}
    finally:
        if other is not None:
            other.close()
    out["from"] = "this host" + ("" if device == "local" else f" (not {device}: its own path may differ)")
    return out


def request_overhead_ms(client, prog: str, iterations: int, warmup: int) -> float:
    """The software time of one request/reply, whatever the network: a 1-element echo program run
    through the server; per run, the server's handling (``handle_ms``) plus this client's encode and
    decode; the median. The socket time (the network's part) is left out on purpose."""
    import torch

    class _Echo(torch.nn.Module):
        def forward(self, x):
            return x + 0

    x = torch.zeros(1)
    client.load(prog, torch.export.export(_Echo(), (x,)))
    samples = []
    for i in range(warmup + max(iterations, 10)):
        client.run(prog, [x])
        if i >= warmup:
            last = client.last
            if last["handle_ms"] is None:
                raise TransportError("the split server does not report handle_ms, so the software time per "
                                     "request cannot be measured; update edgeprobe on the server")
            samples.append(last["handle_ms"] + last["client_encode_ms"] + last["client_decode_ms"])
    return statistics.median(samples)
