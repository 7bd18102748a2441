"""Splits under a device memory limit: exact branch and bound on small graphs, a Lagrangian heuristic above.

Memory limit
------------
A split's device memory is modelled as the *sum* of ``device_memory_bytes`` of its device nodes (a simple
additive model: it ignores buffer reuse/liveness, so it over-estimates a real allocator's peak). With
``memory_limit_bytes`` the problem is a precedence-constrained knapsack (NP-hard in general). If the
unconstrained optimum fits, it is returned (exact). Otherwise graphs with at most
:data:`EXACT_MEMORY_MAX_NODES` nodes are solved exactly by a branch-and-bound enumeration of the valid
sets; larger graphs use a **heuristic** Lagrangian relaxation: a price lambda per byte is added to each
node's device cost, lambda is binary-searched (log scale) over min cuts, the best feasible cut found is
greedily extended node by node (topological order) while the memory allows, and the best set seen is
returned (cloud-only always fits, so there always is one). No optimality guarantee there.
"""

from __future__ import annotations

import math

from edgeprobe.split.maxflow import best_unconstrained
from edgeprobe.split.model import Costs, Index, Network, bits

#: Memory-limited plans are exact (branch and bound) up to this many nodes, a Lagrangian heuristic above.
EXACT_MEMORY_MAX_NODES = 20
_LAGRANGE_ITERATIONS = 30


def exact_memory(ix: Index, costs: Costs, mem: list[int], limit: int) -> int:
    """Branch and bound over the valid sets with device memory <= limit (exact; small graphs)."""
    n = ix.n
    pm, dev, srv, up, down, fixed = ix.pred_mask, costs.dev, costs.srv, costs.up, costs.down, costs.fixed
    tprod = ix.tprod
    srv_total = [srv[i] + sum(down[k] for k in ix.out_tensors[i]) for i in range(n)]
    suffix = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        suffix[i] = suffix[i + 1] + min(dev[i], srv_total[i])
    in_t = ix.in_tensors
    # Model-input uplinks are charged when their first consumer goes to the server; inputs with no
    # consumer cost nothing. Cloud-only (mask 0) is always feasible: start from it.
    best_val = costs.value(ix, 0)
    best_mask = 0

    def rec(i: int, mask: int, used: int, cost: float, charged: int, server: bool) -> None:
        nonlocal best_val, best_mask
        if cost + suffix[i] >= best_val:
            return
        if i == n:
            best_val, best_mask = cost, mask
            return
        if (pm[i] & mask) == pm[i] and used + mem[i] <= limit:
            rec(i + 1, mask | (1 << i), used + mem[i], cost + dev[i], charged, server)
        c = cost + srv_total[i]
        if not server:
            c += fixed
        ch = charged
        for k in in_t[i]:
            p = tprod[k]
            if not (ch >> k) & 1 and (p < 0 or (mask >> p) & 1):
                c += up[k]
                ch |= 1 << k
        rec(i + 1, mask, used, c, ch, True)

    rec(0, 0, 0, 0.0, 0, False)
    return best_mask


def lagrangian_memory(ix: Index, net: Network, objective: str, costs: Costs, mem: list[int], limit: int,
                       first: int, solver: str) -> int:
    """Heuristic for large graphs: binary search on a price per device byte; best feasible cut seen."""

    def mem_of(mask: int) -> int:
        return sum(m for m, on in zip(mem, bits(mask, ix.n)) if on)

    best_mask, best_val = 0, costs.value(ix, 0)  # cloud-only always fits
    if mem_of(first) <= limit:
        return first
    positive = [m for m in mem if m > 0]
    finite_sum = sum(costs.dev) + sum(costs.srv) + sum(costs.up) + sum(costs.down) + costs.fixed
    hi = (finite_sum + 1.0) / min(positive)  # at this price no node with memory stays on the device
    lo = hi * 2.0**-60  # (lambda = 0, the unconstrained optimum, is known to be infeasible)
    for _ in range(_LAGRANGE_ITERATIONS):
        mid = math.sqrt(lo * hi)  # bisect on a log scale: the useful price spans many decades
        priced = Costs(ix, net, objective, memory_price=mid)
        m = best_unconstrained(ix, priced, solver)
        if mem_of(m) <= limit:
            hi = mid
            v = costs.value(ix, m)
            if v < best_val:
                best_val, best_mask = v, m
        else:
            lo = mid
        if hi <= lo * (1 + 1e-9):
            break
    return greedy_extend(ix, costs, mem, limit, best_mask)


def greedy_extend(ix: Index, costs: Costs, mem: list[int], limit: int, mask: int) -> int:
    """Heuristic repair of a feasible cut: walk the nodes in topological order, moving each one that keeps
    the set valid and within ``limit`` onto the device (incremental cost), and return the best set seen.
    The Lagrangian cuts jump between few breakpoints; this fills the memory left between them."""
    n = ix.n
    on = bits(mask, n)
    used = sum(m for m, b in zip(mem, on) if b)
    val = costs.value(ix, mask)
    best_val, best_mask = val, mask
    dev, srv, up, down = costs.dev, costs.srv, costs.up, costs.down
    produced: list[list[int]] = [[] for _ in range(n)]
    for k, p in enumerate(ix.tprod):
        if p >= 0 and ix.tcons[k]:
            produced[p].append(k)
    for v in range(n):
        if on[v] or used + mem[v] > limit or not all(on[p] for p in ix.preds[v]):
            continue
        delta = dev[v] - srv[v] - sum(down[k] for k in ix.out_tensors[v])
        for k in ix.in_tensors[v]:  # charged now (v is a server consumer); still charged after?
            p = ix.tprod[k]
            if (p < 0 or on[p]) and all(on[c] for c in ix.tcons[k] if c != v):
                delta -= up[k]
        for k in produced[v]:  # v's consumers are all on the server (v was): now uplinked
            delta += up[k]
        on[v] = True
        used += mem[v]
        mask |= 1 << v
        val += delta
        if all(on):  # device-only: no round trip (unreachable when the limit binds; kept for exactness)
            val = costs.value(ix, mask)
        if val < best_val:
            best_val, best_mask = val, mask
    return best_mask


def limit_memory(ix: Index, net: Network, objective: str, costs: Costs, mask: int, limit: int, solver: str) -> int:
    """``mask`` (the unconstrained optimum) if it fits in ``limit`` bytes, else the best split that does:
    exact up to :data:`EXACT_MEMORY_MAX_NODES` nodes, the Lagrangian heuristic above."""
    mem = [nd.device_memory_bytes for nd in ix.graph.nodes]
    if sum(m for m, on in zip(mem, bits(mask, ix.n)) if on) <= limit:
        return mask
    if ix.n <= EXACT_MEMORY_MAX_NODES:
        return exact_memory(ix, costs, mem, limit)
    return lagrangian_memory(ix, net, objective, costs, mem, limit, mask, solver)
