"""Where to split a model between the device and a server: the exact DAG planner's entry points.

Pure Python, standard library only (networkx is imported only for the optional reference solver; torch
is never imported here). The inputs are *costs*, whatever
measured them: per-node device and server times (and optionally device energy and memory), the byte size
of every tensor, and a network model. Everything this module returns is a **prediction** computed from
those costs (``Breakdown.predicted`` is always True); the end-to-end verification lives elsewhere.

The cost model is :mod:`edgeprobe.split.model`, the exact minimum cut :mod:`edgeprobe.split.maxflow` and
the memory-limited search :mod:`edgeprobe.split.memory`; each module's docstring gives its part of the
argument. The names of the model are re-exported here.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from edgeprobe.split.maxflow import SOLVERS, best_unconstrained
from edgeprobe.split.memory import EXACT_MEMORY_MAX_NODES, limit_memory
from edgeprobe.split.model import (
    OBJECTIVES,
    Breakdown,
    CostGraph,
    Costs,
    Cut,
    EnergyBreakdown,
    Index,
    Network,
    NodeCost,
    TensorEdge,
    bits,
    check_limit,
    check_objective,
    require_energy,
)

__all__ = [
    "NodeCost",
    "TensorEdge",
    "CostGraph",
    "Network",
    "Breakdown",
    "EnergyBreakdown",
    "Cut",
    "OBJECTIVES",
    "EXACT_MEMORY_MAX_NODES",
    "is_valid",
    "evaluate",
    "plan",
    "brute_force",
    "candidates",
    "policy",
]


# ------------------------------------------------------------------------------------------------ evaluate
def is_valid(graph: CostGraph, device_nodes: Iterable[str]) -> bool:
    """True iff ``device_nodes`` is closed under predecessors (a valid split)."""
    ix = Index(graph)
    return ix.is_valid_mask(ix.mask_of(device_nodes))


def _cut(ix: Index, net: Network, mask: int, objective: str = "latency") -> Cut:
    g = ix.graph
    n = ix.n
    dev_ms = srv_ms = 0.0
    dev_mj = idle_mj = 0.0
    has_energy = all(nd.device_energy_mj is not None for nd in g.nodes)
    mem = 0
    on = bits(mask, n)
    for i, nd in enumerate(g.nodes):
        if on[i]:
            dev_ms += nd.device_ms
            mem += nd.device_memory_bytes
            if has_energy:
                dev_mj += nd.device_energy_mj  # type: ignore[operator]
        else:
            srv_ms += nd.server_ms
            idle_mj += net.idle_power_w * nd.server_ms
    crossing: list[str] = []
    returned: list[str] = []
    up_ms = down_ms = up_mj = down_mj = 0.0
    for k, p in enumerate(ix.tprod):
        if p < 0 or on[p]:
            if not all(on[c] for c in ix.tcons[k]):
                crossing.append(ix.tnames[k])
                t = net.up_ms(ix.tbytes[k])
                up_ms += t
                up_mj += net.tx_power_w * t
        elif ix.tout[k]:
            returned.append(ix.tnames[k])
            t = net.down_ms(ix.tbytes[k])
            down_ms += t
            down_mj += net.rx_power_w * t
    uses_server = not all(on)
    rtt = net.rtt_ms if uses_server else 0.0
    over = net.request_overhead_ms if uses_server else 0.0
    if uses_server:  # one request and one reply, each with its framing
        idle_mj += net.idle_power_w * (net.rtt_ms + over)
        fu, fd = net.framing_ms()
        up_ms, down_ms = up_ms + fu, down_ms + fd
        up_mj, down_mj = up_mj + net.tx_power_w * fu, down_mj + net.rx_power_w * fd
    bd = Breakdown(dev_ms, up_ms, srv_ms, down_ms, rtt, dev_ms + up_ms + srv_ms + down_ms + rtt + over,
                   overhead_ms=over)
    en = EnergyBreakdown(dev_mj, up_mj, down_mj, idle_mj, dev_mj + up_mj + down_mj + idle_mj) if has_energy else None
    return Cut(
        device_nodes=frozenset(ix.names[i] for i in range(n) if on[i]),
        crossing=tuple(crossing),
        returned=tuple(returned),
        breakdown=bd,
        server_nodes=frozenset(ix.names[i] for i in range(n) if not on[i]),
        energy=en,
        device_memory_bytes=mem,
        objective=objective,
    )


def evaluate(graph: CostGraph, network: Network, device_nodes: Iterable[str], objective: str = "latency") -> Cut:
    """The predicted costs of running ``device_nodes`` on the device and the rest on the server.

    Raises ValueError if the set is not closed under predecessors (or names an unknown node). The latency
    breakdown is always filled; the energy breakdown when every node has ``device_energy_mj`` (required for
    ``objective="energy"``)."""
    check_objective(objective)
    ix = Index(graph)
    mask = ix.mask_of(device_nodes)
    if not ix.is_valid_mask(mask):
        bad = [ix.names[i] for i in range(ix.n) if (mask >> i) & 1 and (ix.pred_mask[i] & mask) != ix.pred_mask[i]]
        raise ValueError(f"invalid cut: device node(s) {', '.join(bad)} consume data produced on the server")
    if objective == "energy":
        require_energy(graph)
    return _cut(ix, network, mask, objective)


# ----------------------------------------------------------------------------------------------- public API
def plan(graph: CostGraph, network: Network, objective: str = "latency",
         memory_limit_bytes: int | None = None, *, solver: str = "push_relabel") -> Cut:
    """The best split for ``objective`` ("latency" or "energy"), optionally under a device memory limit.

    Exact (min cut + the round-trip comparison) without a memory limit, exact with one up to
    :data:`EXACT_MEMORY_MAX_NODES` nodes, a Lagrangian heuristic above (see :mod:`edgeprobe.split.memory`)."""
    check_objective(objective)
    check_limit(memory_limit_bytes)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r} (expected one of {', '.join(SOLVERS)})")
    ix = Index(graph)
    costs = Costs(ix, network, objective)
    mask = best_unconstrained(ix, costs, solver)
    if memory_limit_bytes is not None:
        mask = limit_memory(ix, network, objective, costs, mask, memory_limit_bytes, solver)
    return _cut(ix, network, mask, objective)


def brute_force(graph: CostGraph, network: Network, objective: str = "latency",
                memory_limit_bytes: int | None = None) -> Cut:
    """Reference solver: enumerate every valid device set and evaluate it (exponential; for tests)."""
    check_objective(objective)
    check_limit(memory_limit_bytes)
    ix = Index(graph)
    if objective == "energy":
        require_energy(graph)
    best: Cut | None = None
    for mask in ix.ideals():
        cut = _cut(ix, network, mask, objective)
        if memory_limit_bytes is not None and cut.device_memory_bytes > memory_limit_bytes:
            continue
        if best is None or cut.cost < best.cost:
            best = cut
    assert best is not None  # cloud-only always qualifies
    return best


def candidates(graph: CostGraph, network: Network) -> list[Cut]:
    """Candidate splits for a table, sorted by predicted latency and de-duplicated.

    Device-only, cloud-only, ``ancestors(v) + {v}`` for every node v (for a chain: one per boundary), and the
    exact latency optimum (so the chosen cut is always in the table)."""
    ix = Index(graph)
    n = ix.n
    closure = [0] * n  # ancestors(v) | {v} as bit masks
    for i in range(n):
        m = 1 << i
        for p in ix.preds[i]:
            m |= closure[p]
        closure[i] = m
    costs = Costs(ix, network, "latency")
    masks = [(1 << n) - 1, 0, *closure, best_unconstrained(ix, costs)]
    seen: set[int] = set()
    out: list[Cut] = []
    for m in masks:
        if m not in seen:
            seen.add(m)
            out.append(_cut(ix, network, m))
    out.sort(key=lambda c: (c.total_ms, -len(c.device_nodes)))
    return out


def policy(graph: CostGraph, uplink_range_bps: Sequence[float], downlink_bps: float, rtt_ms: float, *,
           per_message_overhead_bytes: int = 0, objective: str = "latency", memory_limit_bytes: int | None = None,
           tx_power_w: float = 1.0, rx_power_w: float = 1.0, idle_power_w: float = 0.0,
           packet_overhead_bytes: int = 0, mss_bytes: int = 1448,
           request_overhead_ms: float = 0.0) -> list[tuple[float, Cut]]:
    """Bandwidth -> split policy: plan at each uplink bandwidth (in the given order) and keep only the
    bandwidths where the chosen device set changes (the first one always). Each entry's cut holds the
    prediction at that bandwidth; the decision holds until the next entry's bandwidth."""
    out: list[tuple[float, Cut]] = []
    prev: frozenset[str] | None = None
    for bw in uplink_range_bps:
        net = Network(float(bw), downlink_bps, rtt_ms, per_message_overhead_bytes, tx_power_w, rx_power_w,
                      idle_power_w, packet_overhead_bytes, mss_bytes, request_overhead_ms)
        cut = plan(graph, net, objective=objective, memory_limit_bytes=memory_limit_bytes)
        if prev is None or cut.device_nodes != prev:
            out.append((float(bw), cut))
            prev = cut.device_nodes
    return out
