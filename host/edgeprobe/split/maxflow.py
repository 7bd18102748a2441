"""The exact minimum s-t cut of a cost graph: the DADS flow network and the max-flow solvers.

Exact min-cut (DADS construction, Hu et al., INFOCOM'19)
--------------------------------------------------------
Source s = device side, sink t = server side; a vertex on the source side after the cut is on the device.

* node v: edge s->v with capacity = server cost of v (cut iff v is on the server side) and v->t with
  capacity = device cost of v (cut iff v is on the device side);
* tensor x produced by p (p = s for a model input) with consumers C and transfer cost u(x):
  one consumer c: edge p->c with capacity u(x); several consumers: an auxiliary vertex a with p->a of
  capacity u(x) and a->c of infinite capacity for every c in C. If p is on the device and any consumer is
  on the server, a must be on the server side (else an infinite a->c edge is cut), so p->a is cut exactly
  once: the tensor is charged once however many server consumers it has;
* infinite reverse edges c->p forbid "server produces, device consumes": a finite cut is closed under
  predecessors, i.e. valid;
* a model output x produced by node p costs its downlink iff p is on the server: that is exactly an extra
  server cost of p, so it is added to the capacity of s->p (no extra vertex is needed);
* "infinite" is a finite BIG = 10 x (sum of all finite capacities) + 1; the cloud-only cut is finite, so
  no minimum cut ever cuts a BIG edge.

For every valid device set D the cut (s + D + the aux vertices of tensors not uplinked | rest) has
capacity f(D) (the cost without the fixed round trip); every finite cut yields a valid D whose f(D) is at
most its capacity. Hence the minimum cut gives D* = argmin f over all valid sets. ``flow_network`` adds
three reductions that keep this exact and shrink the network (each argued there): a constant shift of the
s->v / v->t pair, the transitive reduction of the reverse arcs, and no aux vertex when one consumer
descends from all the others (a residual block's add).

Capacities are converted *exactly* to Python integers (every float is m * 2**e; all of them are scaled
by a common power of two), so the max-flow runs in exact integer arithmetic: no float rounding can make
a solver mis-detect saturated arcs, and the partition is an exact minimiser of the summed float costs.

Solver: a built-in highest-label push-relabel (global relabelling, and a greedy sweep in topological order
as the initial preflow), pure Python on flat lists. ``plan(..., solver="networkx")`` runs networkx's
``preflow_push`` on the same network instead (the tests cross-check the two). On the 1000-node benchmark
DAG (``benchmarks/split_planning.py``) the built-in solver plans in ~40 ms; networkx needs ~0.4 s
(preflow_push and boykov_kolmogorov are similar on the reduced network; boykov_kolmogorov took >3 s on the
unreduced one), most of it building its graph and residual network.

The round trip is exact, too. total(D) = f(D) + rtt * [D != all nodes], with rtt >= 0. Let D* minimise f
over all valid sets (the min cut). If D* is device-only, then for any other D:
total(D) = f(D) + rtt >= f(D*) = total(D*), so device-only is optimal. Otherwise total(D*) = f(D*) + rtt is
<= f(D) + rtt = total(D) for every D that uses the server, so the optimum is the better of D* and
device-only -- which is what :func:`plan` compares. (No "best cut with at least one server node" search is
needed: when the min cut is device-only, nothing with a server node can beat it.)
"""

from __future__ import annotations

import math
from typing import Iterable

from edgeprobe.split.model import Costs, Index, from_bits

# Exact integer scaling of float capacities: at most 2**_MAX_SCALE_BITS (only costs below ~1e-77 round).
_MAX_SCALE_BITS = 256


# ------------------------------------------------------------------------------------------------- min cut
def _scale_bits(values: Iterable[float]) -> int:
    bits = 0
    for v in values:
        if v > 0:
            den = v.as_integer_ratio()[1]  # a power of two
            b = den.bit_length() - 1
            if b > bits:
                bits = b
    return min(bits, _MAX_SCALE_BITS)


def _to_int(v: float, bits: int) -> int:
    num, den = v.as_integer_ratio()
    num <<= bits
    if den == 1:
        return num
    q, r = divmod(num, den)
    return q + (2 * r >= den)  # exact when den <= 2**bits (always, below _MAX_SCALE_BITS)


def flow_network(ix: Index, costs: Costs) -> tuple[int, int, int, dict[tuple[int, int], int], list[int]]:
    """The DADS network for ``costs`` (without the fixed round trip):
    (vertex count, s, t, {arc: capacity}, rank), where rank orders the vertices so that every finite arc and
    every aux -> consumer arc goes to a higher rank (a topological order of the "forward" arcs).

    Vertices 0..n-1 are the graph's nodes; auxiliary tensor vertices and s, t follow. Capacities are exact
    integers (all floats scaled by one power of two). Three exact reductions keep the network small:

    * s->i and i->t are both reduced by their minimum (every cut pays exactly one of them: a constant shift);
    * the infinite "consumer -> producer" arcs are only added for the transitive reduction of the node DAG
      (c -> p is implied when p is an ancestor of another predecessor of c), which leaves the set of finite
      cuts -- the valid splits -- unchanged; the aux -> producer arcs are implied as well and omitted;
    * a tensor whose consumers include one, c*, that descends from all the others needs no auxiliary vertex:
      if any consumer is on the server then so is c* (descendants of a server node are on the server), so
      "uplinked" == "producer on the device and c* on the server": a single arc p -> c*. This is the common
      case of a residual block (the tensor is read by the branch and by the add that closes it).
    """
    n = ix.n
    vals = [*costs.dev, *costs.srv, *costs.up, *costs.down]
    bits = _scale_bits(vals)
    top = max(vals, default=0.0)
    if top > 0 and math.frexp(top)[1] + bits < 1000:
        ldexp = math.ldexp

        def q(v: float) -> int:
            return int(ldexp(v, bits))  # exact: v * 2**bits is an integer-valued float
    else:  # pathological magnitudes: exact big-integer conversion

        def q(v: float) -> int:
            return _to_int(v, bits) if v > 0 else 0

    anc = ix.anc
    cap: dict[tuple[int, int], int] = {}
    inf_arcs: list[tuple[int, int]] = []
    SRC, SNK = -1, -2  # placeholders, renumbered below
    dev, srv, down, up = costs.dev, costs.srv, costs.down, costs.up
    for i in range(n):
        s_cap = q(srv[i])
        for k in ix.out_tensors[i]:
            s_cap += q(down[k])
        d_cap = q(dev[i])
        if s_cap > d_cap:
            cap[(SRC, i)] = s_cap - d_cap
        elif d_cap > s_cap:
            cap[(i, SNK)] = d_cap - s_cap
        preds = ix.preds[i]
        if preds:
            implied = 0
            for p in preds:
                implied |= anc[p]
            inf_arcs.extend((i, p) for p in preds if not (implied >> p) & 1)
    n_aux = 0
    rank = [2 * i + 1 for i in range(n)]  # node i -> 2i+1, aux of a tensor made by p -> 2p+2, input aux -> 0
    for k, cons in enumerate(ix.tcons):
        if not cons:
            continue
        u = q(up[k])
        if not u:
            continue
        p = ix.tprod[k]
        pv = SRC if p < 0 else p
        last = cons[-1]  # consumers are sorted: the only possible common descendant
        if len(cons) == 1 or all((anc[last] >> c) & 1 for c in cons[:-1]):
            e = (pv, last)
            cap[e] = cap.get(e, 0) + u
        else:  # charged once: p -> aux (transfer), aux -> every consumer (infinite)
            a = n + n_aux
            n_aux += 1
            rank.append(2 * p + 2)
            cap[(pv, a)] = u
            inf_arcs.extend((a, c) for c in cons)
    src, snk = n + n_aux, n + n_aux + 1
    rank.extend((-1, 2 * n + 1))
    big = 10 * sum(cap.values()) + 1  # larger than any finite cut: never cut
    out: dict[tuple[int, int], int] = {}
    for (u, v), c in cap.items():
        out[(src if u == SRC else u, snk if v == SNK else v)] = c
    for e in inf_arcs:
        out[e] = big  # never parallel to a finite arc (that would need a cycle)
    return src + 2, src, snk, out, rank


def source_side_push_relabel(nv: int, s: int, t: int, caps: dict[tuple[int, int], int],
                              rank: list[int] | None = None) -> list[int]:
    """Exact max-flow by highest-label push-relabel (integer capacities, periodic global relabelling).

    With ``rank`` (a topological order of the forward arcs), the initial preflow is not just the saturated
    source arcs: one greedy sweep in rank order first pushes every vertex's excess into its sink arc and then
    along forward arcs, which routes most of the flow in O(E). Any preflow is a valid start, so the result
    is exact either way; the sweep only saves push-relabel work.

    Returns a list in which the vertices on the source side of a minimum cut -- those that cannot reach t
    in the final residual network -- have a value >= 0 (the others -1)."""
    head: list[list[int]] = [[] for _ in range(nv)]
    to: list[int] = []
    res: list[int] = []
    for (u, v), c in caps.items():
        head[u].append(len(to))
        to.append(v)
        res.append(c)
        head[v].append(len(to))
        to.append(u)
        res.append(0)
    head_to = [[to[e] for e in h] for h in head]
    N = nv
    excess = [0] * nv
    d = [N] * nv  # label: a lower bound on the residual distance to t; N = cannot reach t
    it = [0] * nv  # current-arc pointers
    buckets: list[list[int]] = [[] for _ in range(N)]  # active vertices by label

    def global_relabel() -> int:
        """Exact labels by a reverse BFS from t in the residual network; returns the highest active label."""
        for v in range(nv):
            d[v] = N
        d[t] = 0
        queue = [t]
        for v in queue:
            dv = d[v] + 1
            hv = head[v]
            tv = head_to[v]
            for j in range(len(hv)):
                u = tv[j]
                if d[u] == N and u != s and res[hv[j] ^ 1]:
                    d[u] = dv
                    queue.append(u)
        for b in buckets:
            b.clear()
        highest = 0
        for v in queue:
            it[v] = 0
            if excess[v] and v != t:
                buckets[d[v]].append(v)
                highest = d[v]
        return highest

    for e in head[s]:  # saturate the source arcs
        c = res[e]
        if c:
            res[e] = 0
            res[e ^ 1] += c
            excess[to[e]] += c
    if rank is not None:
        for u in sorted(range(nv), key=rank.__getitem__):
            ex = excess[u]
            if not ex or u == s or u == t:
                continue
            adj = head[u]
            tos = head_to[u]
            ru = rank[u]
            for sweep in (0, 1):  # the sink arc first, then forward arcs
                for j in range(len(adj)):
                    v = tos[j]
                    if (v == t) if sweep == 0 else (v != t and rank[v] > ru):
                        e = adj[j]
                        r = res[e]
                        if r:
                            f = ex if ex < r else r
                            res[e] = r - f
                            res[e ^ 1] += f
                            excess[v] += f
                            ex -= f
                            if not ex:
                                break
                if not ex:
                    break
            excess[u] = ex
    top = global_relabel()
    work = 0
    relabel_every = nv + len(to) // 2
    while True:
        while top >= 0 and not buckets[top]:
            top -= 1
        if top < 0:
            break
        u = buckets[top].pop()
        du = d[u]
        ex = excess[u]
        if du != top or not ex:
            continue  # stale entry
        adj = head[u]
        tos = head_to[u]
        m = len(adj)
        i = it[u]
        target = du - 1
        while True:  # discharge u
            if i == m:  # relabel
                work += m + 6
                best = N
                for j in range(m):
                    if res[adj[j]]:
                        dv = d[tos[j]]
                        if dv < best:
                            best = dv
                du = best + 1
                if du >= N:  # cannot reach t any more: its excess stays (source side)
                    du = N
                    d[u] = N
                    break
                d[u] = du
                target = du - 1
                i = 0
                continue
            e = adj[i]
            r = res[e]
            if r:
                v = tos[i]
                if d[v] == target:
                    f = ex if ex < r else r
                    res[e] = r - f
                    res[e ^ 1] += f
                    ex -= f
                    if not excess[v] and v != t:
                        buckets[target].append(v)
                    excess[v] += f
                    if not ex:
                        break
            i += 1
        excess[u] = ex
        it[u] = i
        if ex and du < N:
            buckets[du].append(u)
        if du > top:
            top = du if du < N else N - 1
        if work > relabel_every:
            work = 0
            top = global_relabel()
    # Source side of a minimum cut: the vertices that cannot reach t in the residual network.
    side = [0] * nv
    side[t] = -1
    queue = [t]
    for v in queue:
        hv = head[v]
        tv = head_to[v]
        for j in range(len(hv)):
            u = tv[j]
            if side[u] == 0 and res[hv[j] ^ 1]:
                side[u] = -1
                queue.append(u)
    return side


def source_side_networkx(nv: int, s: int, t: int, caps: dict[tuple[int, int], int],
                          rank: list[int] | None = None) -> list[int]:
    """Same contract as :func:`source_side_push_relabel`, with networkx's preflow-push (cross-check / reference)."""
    import networkx as nx
    from networkx.algorithms.flow import preflow_push

    G = nx.DiGraph()
    G.add_nodes_from(range(nv))
    G.add_edges_from((u, v, {"capacity": c}) for (u, v), c in caps.items())
    R = preflow_push(G, s, t, capacity="capacity")
    succ = R._succ
    level = [-1] * nv
    level[s] = 0
    stack = [s]
    while stack:
        u = stack.pop()
        for v, attr in succ[u].items():
            if level[v] < 0 and attr["capacity"] - attr["flow"] > 0:
                level[v] = 0
                stack.append(v)
    return level


SOLVERS = {"push_relabel": source_side_push_relabel, "networkx": source_side_networkx}


def min_cut_mask(ix: Index, costs: Costs, solver: str = "push_relabel") -> int:
    """Device set (bit mask) minimising f = objective without the fixed round-trip cost, by one max-flow."""
    n = ix.n
    if n == 0:
        return 0
    nv, s, t, caps, rank = flow_network(ix, costs)
    level = SOLVERS[solver](nv, s, t, caps, rank)
    if level[t] >= 0:  # cannot happen with exact arithmetic
        raise RuntimeError("max-flow did not separate source and sink")
    return from_bits(level[v] >= 0 for v in range(n))


def best_unconstrained(ix: Index, costs: Costs, solver: str = "push_relabel") -> int:
    """Exact optimum including the fixed round-trip cost (the round-trip argument in this module's docstring)."""
    full = (1 << ix.n) - 1
    m = min_cut_mask(ix, costs, solver)
    if m == full:
        return full
    return full if sum(costs.dev) <= costs.value(ix, m) else m  # value(full) == sum(dev)
