"""Whether the server shares this host's CPUs with the device half, and pinning the device half off its cores."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Optional, Sequence


def _this_host_id() -> Optional[str]:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _is_loopback(host: str) -> bool:
    import ipaddress
    import socket

    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(a[4][0].split("%")[0]).is_loopback for a in found)


def colocation_of(device: str, info: Optional[dict[str, Any]], addr: Optional[tuple[str, int]]
                ) -> Optional[dict[str, Any]]:
    """Does the server share this host's CPUs with the device half, and where may the device half run?

    Same host: the server's ``host_id`` (kernel boot id; equal across network namespaces) is this
    host's, or (a server too old to say) its address is loopback. Then, for a ``local`` device, the
    device half gets this process's cores minus the server's (``info["cpus"]``), with one runtime thread
    per core; when nothing is left (a server on every core) the plan cannot keep the two apart and
    says so in ``warning``."""
    if info is None or addr is None:
        return None
    mine, theirs = _this_host_id(), info.get("host_id")
    if mine and isinstance(theirs, str):
        same = mine == theirs
        how = f"the server's host_id (kernel boot id) {'equals' if same else 'differs from'} this host's"
    elif _is_loopback(addr[0]):
        same, how = True, f"the server's address {addr[0]} is loopback"
    else:
        return {"same_host": None, "how": "the server reports no host_id and its address is not loopback",
                "pinned": False}
    out: dict[str, Any] = {"same_host": same, "how": how, "pinned": False}
    if not same:
        return out
    if device != "local":
        out["note"] = (f"the server runs on this host and the device half on {device}; edgeprobe does not place "
                       "that device's processes")
        return out
    if not hasattr(os, "sched_getaffinity"):  # not Linux: no way to pin here
        out["warning"] = ("WARNING: the device half (local) and edgeprobe serve share this host, and this OS gives "
                          "edgeprobe no way to keep them on separate cores: their threads compete, so the end-to-end "
                          "times are longer than the costs, which were measured one side at a time")
        return out
    cpus = sorted(os.sched_getaffinity(0))
    srv = info.get("cpus")
    srv = sorted(int(c) for c in srv) if isinstance(srv, list) and srv else None
    out.update(host_cpus=cpus, server_cpus=srv, server_threads=info.get("threads"))
    free = sorted(set(cpus) - set(srv)) if srv else []
    if free:
        out.update(pinned=True, device_cpus=free, device_threads=len(free))
        n = info.get("threads")
        if isinstance(n, int) and n > len(srv):
            out["warning"] = (f"WARNING: the server runs {n} torch threads on {len(srv)} core(s) {srv}: they "
                              f"oversubscribe its cores; restart it with --threads {len(srv)}")
        return out
    where = "all of them" if srv is None or set(srv) >= set(cpus) else str(srv)
    hint = (f"restart it as `edgeprobe serve --cpus {cpus[-1]}` (its own core; this plan then pins the device half to "
            f"the others)" if len(cpus) > 1 else "this host has one core for both: measure on two machines")
    out["warning"] = (f"WARNING: the device half (local) and edgeprobe serve share this host's cores {cpus} (the server "
                      f"uses {where}): their thread pools compete while the other side computes, so the end-to-end "
                      f"times are longer than the costs, which were measured one side at a time; {hint}")
    return out


@contextlib.contextmanager
def pinned(cpus: Optional[Sequence[int]]):
    """Run the block with this thread on ``cpus``: every process it starts (the runner, the split
    client) inherits them; restored after. Nothing (None): unchanged."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
