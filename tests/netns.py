"""Two network namespaces joined by a veth pair, optionally shaped with ``tc``: for tests that need
two hosts on one machine (zeroconf across a real link, split computing over a slow link).

Needs root and iproute2 (``ip``, ``tc``). Tests call :func:`netns_available` (and
:func:`shaping_available` where they shape the link) and ``pytest.skip(reason)`` when it says no::

    ok, why = netns_available()
    if not ok:
        pytest.skip(why)
    with veth_pair(rate_mbit=8, delay_ms=20) as net:
        server = net.popen(net.ns_a, [sys.executable, "-m", "http.server", "--bind", net.addr_a])
        net.run(net.ns_b, ["curl", f"http://{net.addr_a}:8000/"], check=True)

Shaping is ``tc qdisc ... root netem rate R delay D`` on both ends of the veth, so each direction
is shaped (an RTT is twice the delay). Kernels built without netem (``CONFIG_NET_SCH_NETEM``)
can still limit the rate: without a delay, :func:`set_shaping` falls back to ``tbf``; a delay
without netem raises :class:`ShapingUnavailable`. ``VethPair.shaping`` says which qdisc is in use.

Names hold the pid and a random suffix, and each pair gets its own random 10.x.y.0/24 subnet, so
parallel runs do not clash. Leaving the context kills the processes still running in the two
namespaces (they are the test's own: nothing else can run in a namespace made here) and deletes
the namespaces, which removes the veth pair with them.

Only the standard library: the measuring helpers run ``sys.executable`` with small scripts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

CMD_TIMEOUT_S = 20
_MAX_FRAME_BYTES = 1514  # the largest frame a veth (MTU 1500) hands its qdisc: tbf's bucket holds two


class NetnsError(RuntimeError):
    """An ``ip``/``tc`` command failed while building or shaping the namespaces."""


class ShapingUnavailable(NetnsError):
    """This kernel cannot apply the requested shaping (e.g. a delay without netem)."""


def _cmd(argv: Sequence[str], *, check: bool = True, timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        if not check:
            return subprocess.CompletedProcess(list(argv), -1, "", str(exc))
        raise NetnsError(f"`{' '.join(argv)}` failed: {exc}") from None
    if check and p.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed with exit code {p.returncode}: {p.stderr.strip()}")
    return p


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def _throwaway_ns(prefix: str) -> Iterator[str]:
    name = _unique(prefix)
    try:
        _cmd(["ip", "netns", "add", name])
        yield name
    finally:
        _cmd(["ip", "netns", "del", name], check=False)


@functools.lru_cache(maxsize=None)
def netns_available() -> tuple[bool, str]:
    """(True, "") when this process can create namespaces joined by a veth pair, else (False, why).

    Really tries: creates a throwaway namespace with a veth pair inside it, then deletes it."""
    if not sys.platform.startswith("linux"):
        return False, "network namespaces need Linux"
    if os.geteuid() != 0:
        return False, "network namespaces need root (this test runs as uid %d)" % os.geteuid()
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return False, f"iproute2's `{tool}` is not installed"
    try:
        with _throwaway_ns("epcheck") as ns:
            _cmd(["ip", "-n", ns, "link", "add", "chk0", "type", "veth", "peer", "name", "chk1"])
            _cmd(["ip", "netns", "exec", ns, "true"])
    except NetnsError as exc:
        return False, f"cannot use network namespaces here: {exc}"
    return True, ""


@functools.lru_cache(maxsize=None)
def _qdisc_works(kind: str) -> tuple[bool, str]:
    args = {"netem": ["netem", "delay", "1ms"], "tbf": ["tbf", "rate", "1mbit", "burst", "32kb", "latency", "50ms"]}[kind]
    ok, why = netns_available()
    if not ok:
        return False, why
    try:
        with _throwaway_ns("epcheck") as ns:
            _cmd(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", *args])
    except NetnsError as exc:
        hint = " (the kernel lacks CONFIG_NET_SCH_%s)" % kind.upper() if "unknown" in str(exc) else ""
        return False, f"tc {kind} is not usable here{hint}: {exc}"
    return True, ""


def shaping_available(delay: bool = True) -> tuple[bool, str]:
    """(True, "") when :func:`set_shaping` can shape a link here, else (False, why).

    ``delay=True``: needs netem. ``delay=False`` (rate only): netem, or else tbf."""
    ok, why = _qdisc_works("netem")
    if ok or delay or not netns_available()[0]:
        return ok, why
    ok_tbf, why_tbf = _qdisc_works("tbf")
    return (True, "") if ok_tbf else (False, f"{why}; {why_tbf}")


def _rate_arg(rate_mbit: float) -> str:
    return f"{max(1, round(rate_mbit * 1000))}kbit"


def set_shaping(ns: str, ifname: str, rate_mbit: Optional[float], delay_ms: Optional[float]) -> Optional[str]:
    """Shape the egress of ``ifname`` in namespace ``ns`` (``tc qdisc replace``, so profiles can
    change mid-test). Both None: remove the shaping. Returns the qdisc used: "netem", "tbf" or None.

    Only one direction: shape both ends of a link for both directions (``VethPair.set_shaping``)."""
    if rate_mbit is not None and rate_mbit <= 0:
        raise ValueError("rate_mbit must be positive (or None for no rate limit)")
    if delay_ms is not None and delay_ms < 0:
        raise ValueError("delay_ms must be >= 0 (or None for no delay)")
    if rate_mbit is None and not delay_ms:  # nothing to shape: back to the default qdisc
        _cmd(["tc", "-n", ns, "qdisc", "del", "dev", ifname, "root"], check=False)  # none there: fine
        return None
    if _qdisc_works("netem")[0]:
        args = ["netem"]
        if rate_mbit is not None:
            args += ["rate", _rate_arg(rate_mbit)]
        args += ["delay", f"{round((delay_ms or 0) * 1000)}us"]
        # netem's default queue of 1000 packets holds about 1.5 MB: enough for any test transfer.
        _cmd(["tc", "-n", ns, "qdisc", "replace", "dev", ifname, "root", *args, "limit", "10000"])
        return "netem"
    if delay_ms:
        raise ShapingUnavailable(f"a {delay_ms} ms delay needs tc netem: {_qdisc_works('netem')[1]}")
    ok, why = _qdisc_works("tbf")
    if not ok:
        raise ShapingUnavailable(f"rate limiting needs tc netem or tbf: {_qdisc_works('netem')[1]}; {why}")
    rate_bytes = rate_mbit * 1e6 / 8
    # A small bucket, so that short messages are rate limited too, as on a real link (netem's rate has
    # no bucket at all): the tokens saved while the link idles (up to the burst) send at line rate, so
    # a 32 KB burst let a 12 KB message through unshaped after any pause. Two full frames (tbf splits
    # GSO packets larger than the bucket into segments), or 2 ms of traffic at fast rates.
    burst = max(2 * _MAX_FRAME_BYTES, int(rate_bytes * 0.002))
    # The queue: at least 256 KB or 0.5 s of traffic, so a burst of a few 64 KB messages is queued, not
    # dropped (a drop costs a TCP retransmission timeout, >= 200 ms, in a latency measurement).
    limit = burst + max(256 * 1024, int(rate_bytes * 0.5))
    _cmd(["tc", "-n", ns, "qdisc", "replace", "dev", ifname, "root", "tbf", "rate", _rate_arg(rate_mbit),
          "burst", str(burst), "limit", str(limit)])
    return "tbf"


@dataclass
class VethPair:
    """Two namespaces joined by a veth pair: ``ifname_a`` (``addr_a``) in ``ns_a``, ``ifname_b``
    (``addr_b``) in ``ns_b``. ``ns`` arguments take a namespace name, or "a" / "b"."""

    ns_a: str
    ns_b: str
    addr_a: str
    addr_b: str
    ifname_a: str
    ifname_b: str
    prefixlen: int = 24
    shaping: Optional[str] = None  # the qdisc shaping the link: "netem", "tbf" or None
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def ns(self, which: str) -> str:
        return {"a": self.ns_a, "b": self.ns_b}.get(which, which)

    def ifname(self, ns: str) -> str:
        ns = self.ns(ns)
        if ns not in (self.ns_a, self.ns_b):
            raise ValueError(f"{ns!r} is not one of this pair's namespaces")
        return self.ifname_a if ns == self.ns_a else self.ifname_b

    def argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in namespace ``ns`` (``ip netns exec`` execs it: same pid)."""
        self.ifname(ns)  # refuse namespaces that are not this pair's
        return ["ip", "netns", "exec", self.ns(ns), *[str(a) for a in argv]]

    def run(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
        """``subprocess.run`` in namespace ``ns``; a 120 s timeout unless ``timeout`` is given."""
        kwargs.setdefault("timeout", 120)
        return subprocess.run(self.argv(ns, argv), **kwargs)

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """``subprocess.Popen`` in namespace ``ns``; still running when the pair goes away, it is killed."""
        proc = subprocess.Popen(self.argv(ns, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def set_shaping(self, rate_mbit: Optional[float], delay_ms: Optional[float], *, ends: str = "ab") -> Optional[str]:
        """Shape the link: both ends (each direction) by default, or ``ends="a"`` / ``"b"`` for
        the egress of that end only. Both None removes the shaping."""
        kinds = {set_shaping(self.ns(e), self.ifname(e), rate_mbit, delay_ms) for e in ends}
        self.shaping = next(iter(kinds - {None}), None)
        return self.shaping

    def _stop_everything(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        # Anything else still in these namespaces was started by the test in them: kill it by pid,
        # or the namespace would outlive `ip netns del` as long as it runs.
        for ns in (self.ns_a, self.ns_b):
            for pid in _cmd(["ip", "netns", "pids", ns], check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)


_NAME_OK = re.compile(r"^[A-Za-z0-9_-]{1,20}$")


@contextlib.contextmanager
def veth_pair(prefix: str = "ep", subnet: Optional[str] = None, rate_mbit: Optional[float] = None,
              delay_ms: Optional[float] = None) -> Iterator[VethPair]:
    """Two fresh namespaces joined by a veth pair with ``{subnet}.1/24`` and ``{subnet}.2/24``
    (``subnet`` like "10.77.0"; default: a random 10.x.y), lo and the veth up, multicast on,
    shaped on both ends when ``rate_mbit`` or ``delay_ms`` is given. Always cleaned up."""
    if not _NAME_OK.match(prefix):
        raise ValueError("prefix must be 1-20 characters of [A-Za-z0-9_-]")
    if subnet is None:
        subnet = f"10.{random.randint(0, 255)}.{random.randint(0, 255)}"
    if not re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}", subnet):
        raise ValueError(f"subnet must be the first three octets, like 10.77.0, not {subnet!r}")
    base = _unique(prefix)
    # The veth ends are created directly inside their namespaces, so their names only need to be
    # unique there (and at most 15 characters).
    net = VethPair(ns_a=f"{base}-a", ns_b=f"{base}-b", addr_a=f"{subnet}.1", addr_b=f"{subnet}.2",
                   ifname_a=f"{prefix[:13]}-a", ifname_b=f"{prefix[:13]}-b")
    with _namespaces(net):
        _add_veth(net.ns_a, net.ns_b, net.ifname_a, net.ifname_b, net.addr_a, net.addr_b, net.prefixlen)
        if rate_mbit is not None or delay_ms is not None:
            net.set_shaping(rate_mbit, delay_ms)
        _wait_link_up(net)
        yield net


@contextlib.contextmanager
def _namespaces(net: VethPair) -> Iterator[None]:
    """Create ``net``'s two namespaces (lo up); on the way out, stop what runs in them and delete them."""
    made: list[str] = []
    try:
        for ns in (net.ns_a, net.ns_b):
            _cmd(["ip", "netns", "add", ns])
            made.append(ns)
            _cmd(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
        yield
    finally:
        try:
            if made:
                net._stop_everything()
        finally:
            for ns in made:
                _cmd(["ip", "netns", "del", ns], check=False)


def _add_veth(ns_a: str, ns_b: str, if_a: str, if_b: str, addr_a: str, addr_b: str, prefixlen: int) -> None:
    """A veth pair between two namespaces (its ends made inside them, so their names need only be
    unique there), addressed, multicast on, up."""
    _cmd(["ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
    for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
        _cmd(["ip", "-n", ns, "addr", "add", f"{addr}/{prefixlen}", "dev", ifname])
        _cmd(["ip", "-n", ns, "link", "set", "dev", ifname, "multicast", "on"])
        _cmd(["ip", "-n", ns, "link", "set", "dev", ifname, "up"])


def _wait_link_up(net: VethPair, timeout_s: float = 10.0) -> None:
    """Wait until both veth ends report carrier (the address is usable: no DAD for IPv4)."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = [_cmd(["ip", "-n", ns, "-o", "link", "show", "dev", ifname]).stdout
                  for ns, ifname in ((net.ns_a, net.ifname_a), (net.ns_b, net.ifname_b))]
        if all("LOWER_UP" in s for s in states):
            return
        if time.monotonic() > deadline:
            raise NetnsError(f"the veth pair did not come up: {states}")
        time.sleep(0.05)



# --- a userspace-emulated link (rate + delay without netem) -------------------------------------------
_LINKEMU = os.path.join(os.path.dirname(os.path.abspath(__file__)), "linkemu.py")


@functools.lru_cache(maxsize=None)
def emulation_available() -> tuple[bool, str]:
    """(True, "") when :func:`emulated_link` can run here (root, namespaces and /dev/net/tun)."""
    ok, why = netns_available()
    if not ok:
        return ok, why
    if not os.path.exists("/dev/net/tun"):
        return False, "/dev/net/tun is missing (no TUN driver): the userspace link emulator needs it"
    return True, ""


@dataclass
class EmulatedLink(VethPair):
    """Two namespaces joined through ``tests/linkemu.py`` (a TUN device in each, a point-to-point
    link between ``addr_a`` and ``addr_b``) instead of a veth pair. ``shaping`` is "linkemu"."""

    control: str = ""
    side_a: Optional[str] = None  # with side_channel: an unshaped veth pair between the same namespaces
    side_b: Optional[str] = None
    emulator: Optional[subprocess.Popen] = field(default=None, repr=False)
    counters: dict = field(default_factory=dict)

    def set_shaping(self, rate_mbit: Optional[float], delay_ms: Optional[float], *, ends: str = "ab") -> Optional[str]:
        """Both directions: the emulator shapes the link as a whole (``ends`` must be "ab")."""
        if ends != "ab":
            raise ValueError("an emulated link is shaped in both directions at once (ends='ab')")
        import linkemu  # tests/ is on sys.path

        linkemu.set_shaping(self.control, rate_mbit, delay_ms or 0.0)
        self.shaping = "linkemu"
        return self.shaping


@contextlib.contextmanager
def emulated_link(prefix: str = "ep", subnet: Optional[str] = None, rate_mbit: Optional[float] = None,
                  delay_ms: Optional[float] = None, limit_packets: int = 10000,
                  side_channel: bool = False) -> Iterator[EmulatedLink]:
    """Like :func:`veth_pair`, but the link is the userspace emulator (``tests/linkemu.py``): rate
    *and* one-way delay each way on any kernel, netem or not, counted on whole IP packets. The
    planner's model of it: rate over IP bytes (52 B of TCP/IPv4 headers per 1448 B segment),
    RTT = 2 x ``delay_ms``. Always cleaned up; ``link.counters`` holds the emulator's counters after.

    ``side_channel``: also an unshaped veth pair between the two namespaces (``side_a``/``side_b``, another
    /24), for traffic that does not belong on the emulated link (a host loading programs onto a server
    that the device then reaches over the slow link)."""
    if not _NAME_OK.match(prefix):
        raise ValueError("prefix must be 1-20 characters of [A-Za-z0-9_-]")
    if subnet is None:
        subnet = f"10.{random.randint(0, 255)}.{random.randint(0, 255)}"
    base = _unique(prefix)
    tag = secrets.token_hex(3)
    # The TUN devices are made in this namespace, then moved: their names must be unique here.
    net = EmulatedLink(ns_a=f"{base}-a", ns_b=f"{base}-b", addr_a=f"{subnet}.1", addr_b=f"{subnet}.2",
                       ifname_a=f"{prefix[:6]}{tag}a", ifname_b=f"{prefix[:6]}{tag}b", prefixlen=32,
                       control=os.path.join(tempfile.gettempdir(), f"linkemu-{base}.sock"))
    with _namespaces(net):
        argv = [sys.executable, _LINKEMU, "--names", net.ifname_a, net.ifname_b, "--delay-ms", str(delay_ms or 0.0),
                "--limit", str(limit_packets), "--control", net.control]
        if rate_mbit is not None:
            argv += ["--rate-mbit", str(rate_mbit)]
        net.emulator = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        try:
            line = first_line(net.emulator, 20)
            if not line.startswith("ready"):
                raise NetnsError(f"the link emulator did not start: {line!r}")
            for ns, ifname, addr, peer in ((net.ns_a, net.ifname_a, net.addr_a, net.addr_b),
                                           (net.ns_b, net.ifname_b, net.addr_b, net.addr_a)):
                _cmd(["ip", "link", "set", "dev", ifname, "netns", ns])
                _cmd(["ip", "-n", ns, "addr", "add", addr, "peer", f"{peer}/32", "dev", ifname])
                _cmd(["ip", "-n", ns, "link", "set", "dev", ifname, "multicast", "on"])
                _cmd(["ip", "-n", ns, "link", "set", "dev", ifname, "up"])
            if side_channel:
                side = subnet
                while side == subnet:
                    side = f"10.{random.randint(0, 255)}.{random.randint(0, 255)}"
                net.side_a, net.side_b = f"{side}.1", f"{side}.2"
                _add_veth(net.ns_a, net.ns_b, f"{prefix[:11]}-sa", f"{prefix[:11]}-sb", net.side_a, net.side_b, 24)
            net.shaping = "linkemu" if (rate_mbit is not None or delay_ms) else None
            yield net
        finally:
            try:
                out, _ = net.emulator.communicate(timeout=10)  # closing stdin stops it
                last = (out or "").strip().splitlines()[-1:] or [""]
                with contextlib.suppress(ValueError):
                    net.counters = json.loads(last[0])
            except subprocess.TimeoutExpired:
                net.emulator.kill()
                net.emulator.wait(timeout=5)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(net.control)


# --- measuring the link (stdlib scripts run in the namespaces) --------------------------------------

_PING = r"""
import json, os, socket, struct, sys, time
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
dst, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(5)
ident, payload, rtts = os.getpid() & 0xFFFF, b"edgeprobe-ping" * 4, []
for seq in range(count):
    body = struct.pack("!HH", ident, seq) + payload
    pkt = struct.pack("!BBH", 8, 0, csum(struct.pack("!BBH", 8, 0, 0) + body)) + body
    t0 = time.monotonic()
    s.sendto(pkt, (dst, 0))
    while True:
        data = s.recv(4096)
        ihl = (data[0] & 0xF) * 4
        typ, _code, _sum, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if typ == 0 and rid == ident and rseq == seq:
            break
    rtts.append(time.monotonic() - t0)
    time.sleep(0.05)
print(json.dumps(rtts))
"""

_SINK = r"""
import socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
n = 0
while True:
    b = conn.recv(1 << 16)
    if not b:
        break
    n += len(b)
conn.sendall(str(n).encode())
conn.close()
"""

_SOURCE = r"""
import json, socket, sys, time
host, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=60)
t0 = time.monotonic()
s.sendall(b"\0" * nbytes)
s.shutdown(socket.SHUT_WR)
got = s.recv(64)
print(json.dumps({"seconds": time.monotonic() - t0, "received": int(got)}))
"""


def ping_rtts(net: VethPair, ns: str, dst: str, count: int = 3, timeout_s: float = 30) -> list[float]:
    """ICMP echo round trips (seconds) from namespace ``ns`` to ``dst`` (a raw socket: root)."""
    p = net.run(ns, [sys.executable, "-c", _PING, dst, str(count)], capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0:
        raise NetnsError(f"ping from {ns} to {dst} failed: {p.stderr.strip()}")
    return json.loads(p.stdout)


def tcp_transfer_seconds(net: VethPair, src_ns: str, dst_ns: str, dst_addr: str, nbytes: int,
                         timeout_s: float = 120) -> float:
    """Seconds to send ``nbytes`` over TCP from ``src_ns`` to a sink on ``dst_addr`` in ``dst_ns``,
    from connect to the sink's acknowledgement of every byte (excludes interpreter start-up)."""
    sink = net.popen(dst_ns, [sys.executable, "-c", _SINK, dst_addr], stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    try:
        port = sink.stdout.readline().strip()
        if not port:
            raise NetnsError(f"the TCP sink in {dst_ns} did not start: {sink.stderr.read()}")
        p = net.run(src_ns, [sys.executable, "-c", _SOURCE, dst_addr, port, str(nbytes)],
                    capture_output=True, text=True, timeout=timeout_s)
        if p.returncode != 0:
            raise NetnsError(f"TCP transfer from {src_ns} to {dst_addr} failed: {p.stderr.strip()}")
        result = json.loads(p.stdout)
        if result["received"] != nbytes:
            raise NetnsError(f"the sink received {result['received']} of {nbytes} bytes")
        return float(result["seconds"])
    finally:
        if sink.poll() is None:
            sink.kill()
        sink.wait(timeout=10)


def require_netns() -> None:
    """Skip the calling test, with the reason, where network namespaces cannot be made."""
    import pytest

    ok, why = netns_available()
    if not ok:
        pytest.skip(why)


def first_line(proc: "subprocess.Popen", timeout_s: float) -> str:
    """The first stdout line of a server process (its JSON start line), or a failure that says why:
    no output in time, or the process exited (with its stderr when that is piped)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout_s):
        raise AssertionError(f"no output from {proc.args} in {timeout_s} s")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr is not None else ""
        raise AssertionError(f"{proc.args} exited ({proc.poll()}) without a line" + (f": {err}" if err else ""))
    return line

