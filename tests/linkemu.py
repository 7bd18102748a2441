"""A userspace link emulator: rate, one-way delay and a drop-tail queue between two TUN devices.

For kernels without ``sch_netem`` (this VM's has only tbf/htb/prio/pfifo: a qdisc can limit a rate
but not delay a packet). ``tests/netns.py`` (:func:`netns.emulated_link`) puts one TUN device in each
of two network namespaces and this process forwards IP packets between them, the way Mahimahi's
``mm-delay``/``mm-link`` do (also userspace, also TUN; it is not packaged for this Debian). Per
direction, a packet of ``n`` bytes (the whole IP packet, headers included, like a link's rate)
that arrives at ``t`` leaves the link at ``max(t, link free) + n * 8 / rate`` and is delivered
``delay`` later: serialisation then propagation, as netem's ``rate`` + ``delay``. More than
``--limit`` packets inside the link are dropped at its tail (netem's ``limit``).

    python tests/linkemu.py --names epA epB --rate-mbit 5.85 --delay-ms 15 --control /tmp/x.sock

Prints ``ready`` once both TUN devices exist (the caller then moves them into their namespaces
and configures them), then forwards until stdin closes, and prints one JSON line of counters
(packets and bytes per direction, drops). :func:`set_shaping` changes the shaping of both
directions through the ``--control`` Unix socket: a filesystem path, so a process in any network
namespace can reach it (a benchmark inside the device's namespace switches between profiles).

Timing: one thread, ``select`` with microsecond timeouts and SCHED_FIFO priority when allowed,
so a busy CPU does not postpone deliveries; the forwarding itself costs a few microseconds per
packet. Only the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import heapq
import json
import os
import select
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65536


def open_tun(name: str) -> int:
    """A new TUN device (IP packets, no packet-info header) named ``name``; it lives as long as the fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Direction:
    """One direction of the link: its own serialisation clock and queue."""

    def __init__(self, out_fd: int, rate_bps: float | None, delay_s: float, limit: int) -> None:
        self.out_fd = out_fd
        self.rate_bps = rate_bps
        self.delay_s = delay_s
        self.limit = limit
        self.free_at = 0.0  # when the link finishes serialising the last accepted packet
        self.inside = 0  # packets accepted and not yet delivered
        self.packets = self.bytes = self.drops = 0

    def accept(self, now: float, size: int) -> float | None:
        """When a packet of ``size`` bytes arriving ``now`` is delivered, or None if dropped."""
        if self.inside >= self.limit:
            self.drops += 1
            return None
        start = max(now, self.free_at)
        leave = start + (size * 8.0 / self.rate_bps if self.rate_bps else 0.0)
        self.free_at = leave
        self.inside += 1
        self.packets += 1
        self.bytes += size
        return leave + self.delay_s


def _realtime() -> str:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return "SCHED_FIFO"
    except (OSError, AttributeError):
        return "normal"


def set_shaping(control: str, rate_mbit: float | None, delay_ms: float, timeout_s: float = 5.0) -> None:
    """Change a running emulator's rate (None: unlimited) and one-way delay, both directions.
    Packets already inside the link keep the times they were given."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(control)
        s.sendall(json.dumps({"rate_mbit": rate_mbit, "delay_ms": delay_ms}).encode() + b"\n")
        reply = s.makefile("rb").readline()
    if reply.strip() != b"ok":
        raise RuntimeError(f"the link emulator refused the shaping: {reply!r}")


def _apply(conn: socket.socket, dirs: dict) -> None:
    try:
        conn.settimeout(2.0)
        cfg = json.loads(conn.makefile("rb").readline())
        r, d_ms = cfg.get("rate_mbit"), float(cfg.get("delay_ms") or 0.0)
        if (r is not None and float(r) <= 0) or d_ms < 0:
            raise ValueError("rate_mbit > 0 (or null) and delay_ms >= 0")
        for d in dirs.values():
            d.rate_bps = float(r) * 1e6 if r else None
            d.delay_s = d_ms / 1e3
        conn.sendall(b"ok\n")
    except (OSError, ValueError, TypeError) as exc:
        with contextlib.suppress(OSError):
            conn.sendall(f"error {exc}\n".encode())
    finally:
        conn.close()


def run(names: tuple[str, str], rate_mbit: float | None, delay_ms: float, limit: int,
        control: str | None = None) -> dict:
    fd_a, fd_b = open_tun(names[0]), open_tun(names[1])
    rate = rate_mbit * 1e6 if rate_mbit else None
    dirs = {fd_a: Direction(fd_b, rate, delay_ms / 1e3, limit), fd_b: Direction(fd_a, rate, delay_ms / 1e3, limit)}
    sched = _realtime()
    heap: list[tuple[float, int, Direction, bytes]] = []
    seq = 0
    stdin = sys.stdin.fileno()
    watch: list = [fd_a, fd_b, stdin]
    listener = None
    if control:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(control)
        listener.listen(4)
        watch.append(listener)
    print(f"ready {sched}", flush=True)
    while True:
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, d, pkt = heapq.heappop(heap)
            d.inside -= 1
            try:
                os.write(d.out_fd, pkt)
            except BlockingIOError:
                d.drops += 1  # the receiving stack's queue is full: as a real NIC would, drop
            except OSError:
                pass  # the interface is down (being torn down): nothing to deliver to
        timeout = max(0.0, heap[0][0] - time.monotonic()) if heap else None
        readable, _, _ = select.select(watch, [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            if fd is listener:
                _apply(listener.accept()[0], dirs)
                continue
            if fd == stdin:
                if not os.read(stdin, 4096):  # the caller is done (or gone)
                    if listener is not None:
                        listener.close()
                        with contextlib.suppress(OSError):
                            os.unlink(control)  # type: ignore[arg-type]
                    return _counters(dirs, fd_a, fd_b, sched)
                continue
            d = dirs[fd]
            for _ in range(256):  # drain what is there, but keep delivering on time
                try:
                    pkt = os.read(fd, MAX_PACKET)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # the interface is down
                at = d.accept(now, len(pkt))
                if at is not None:
                    seq += 1
                    heapq.heappush(heap, (at, seq, d, pkt))


def _counters(dirs: dict, fd_a: int, fd_b: int, sched: str) -> dict:
    a, b = dirs[fd_a], dirs[fd_b]
    return {"a_to_b": {"packets": a.packets, "bytes": a.bytes, "drops": a.drops},
            "b_to_a": {"packets": b.packets, "bytes": b.bytes, "drops": b.drops}, "scheduling": sched}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--names", nargs=2, required=True, metavar=("A", "B"), help="the two TUN device names to create")
    p.add_argument("--rate-mbit", type=float, help="link rate each way in Mbit/s (IP bytes); default unlimited")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay each way")
    p.add_argument("--limit", type=int, default=10000, help="packets inside the link per direction before drops")
    p.add_argument("--control", help="Unix socket path that takes shaping changes (see set_shaping)")
    a = p.parse_args()
    if (a.rate_mbit is not None and a.rate_mbit <= 0) or a.delay_ms < 0 or a.limit < 1:
        p.error("--rate-mbit > 0, --delay-ms >= 0 and --limit >= 1")
    counters = run((a.names[0], a.names[1]), a.rate_mbit, a.delay_ms, a.limit, a.control)
    print(json.dumps(counters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
