"""Where to split a model between the device and a server: an exact DAG planner.

Pure Python, standard library only (networkx is imported only for the optional reference solver; torch
is never imported here). The inputs are *costs*, whatever
measured them: per-node device and server times (and optionally device energy and memory), the byte size
of every tensor, and a network model. Everything this module returns is a **prediction** computed from
those costs (``Breakdown.predicted`` is always True); the end-to-end verification lives elsewhere.

Model
-----
A :class:`CostGraph` is a DAG of :class:`NodeCost` (given in a topological order) joined by
:class:`TensorEdge` values. A model input has no producer and lives on the device; a model output must end
up on the device. A split is the set of nodes that run on the device (``device_nodes``); the rest run on the
server. A split is *valid* iff ``device_nodes`` is closed under predecessors: once data has gone to the
server it never comes back, except the final outputs. Device-only and cloud-only are both valid.

Latency of a split (``objective="latency"``)::

    sum(device_ms of device nodes)
  + uplink of every tensor that is on the device (a model input, or produced by a device node) and is
    consumed by at least one server node -- charged ONCE however many server consumers it has
  + sum(server_ms of server nodes)
  + downlink of every model output produced by a server node
  + rtt_ms + request_overhead_ms if at least one node runs on the server (one round trip), else 0

A run that uses the server is one request message (all the crossing tensors) and one reply (the outputs
made on the server): ``Network.up_ms(n)`` = wire(n) * 8 / uplink_bps for a tensor of n bytes, where
wire(n) = n * (1 + packet_overhead_bytes / mss_bytes) adds the TCP/IP headers the link also carries
(linear, so that it stays additive over tensors: at most one header away from the exact count), and the
framing of the two messages (``per_message_overhead_bytes`` each way) is charged once, with the round trip.

Device energy (``objective="energy"``) uses the same structure with other coefficients: device nodes cost
their measured ``device_energy_mj``; an uplinked tensor costs ``tx_power_w * up_ms`` and a downloaded output
``rx_power_w * down_ms`` (W x ms = mJ); while the server computes and during the round trip the device
draws ``idle_power_w`` (default 0, i.e. server time is free for the device battery). ``tx_power_w``,
``rx_power_w`` and ``idle_power_w`` are parameters of the user's radio / SoC, *not* measured here.

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
most its capacity. Hence the minimum cut gives D* = argmin f over all valid sets. ``_flow_network`` adds
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
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

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

OBJECTIVES = ("latency", "energy")
#: Memory-limited plans are exact (branch and bound) up to this many nodes, a Lagrangian heuristic above.
EXACT_MEMORY_MAX_NODES = 20
_LAGRANGE_ITERATIONS = 30
# Exact integer scaling of float capacities: at most 2**_MAX_SCALE_BITS (only costs below ~1e-77 round).
_MAX_SCALE_BITS = 256


# --------------------------------------------------------------------------------------------- data model
@dataclass(frozen=True)
class NodeCost:
    """One operator (or fused group): its measured costs on each side."""

    name: str
    device_ms: float
    server_ms: float
    device_energy_mj: float | None = None
    device_memory_bytes: int = 0


@dataclass(frozen=True)
class TensorEdge:
    """A tensor: who produces it (None for a model input), who consumes it, and its encoded size."""

    name: str
    producer: str | None
    consumers: tuple[str, ...]
    bytes: int
    is_input: bool = False
    is_output: bool = False


@dataclass(frozen=True)
class CostGraph:
    """Nodes in a topological order and the tensors between them."""

    nodes: tuple[NodeCost, ...]
    tensors: tuple[TensorEdge, ...]


@dataclass(frozen=True)
class Network:
    """Link model. ``per_message_overhead_bytes``: the framing of one message (length prefix and header),
    charged once per direction of a run that uses the server. ``packet_overhead_bytes`` per ``mss_bytes``
    of payload: the headers below the framing that the link's rate also carries (52 for TCP/IPv4 with
    timestamps over a 1500-byte MTU; 0 when the rates are TCP goodput, e.g. from a speed test).
    ``tx_power_w``/``rx_power_w``/``idle_power_w`` describe the user's radio and SoC (parameters for the
    energy objective, not measurements)."""

    uplink_bps: float
    downlink_bps: float
    rtt_ms: float
    per_message_overhead_bytes: int = 0
    tx_power_w: float = 1.0
    rx_power_w: float = 1.0
    idle_power_w: float = 0.0
    packet_overhead_bytes: int = 0
    mss_bytes: int = 1448
    request_overhead_ms: float = 0.0  # software time of one request/reply (client + server), fixed per run

    def __post_init__(self) -> None:
        for name in ("uplink_bps", "downlink_bps", "mss_bytes"):
            v = getattr(self, name)
            if not v > 0:  # also rejects NaN
                raise ValueError(f"Network.{name} must be > 0, got {v!r}")
        for name in ("rtt_ms", "per_message_overhead_bytes", "tx_power_w", "rx_power_w", "idle_power_w",
                     "packet_overhead_bytes", "request_overhead_ms"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"Network.{name} must be finite and >= 0, got {v!r}")

    def wire_bytes(self, nbytes: float) -> float:
        """Bytes on the link for ``nbytes`` of payload: the payload plus its share of packet headers."""
        return nbytes * (1.0 + self.packet_overhead_bytes / self.mss_bytes)

    def up_ms(self, nbytes: float) -> float:
        """Predicted time to put ``nbytes`` of one message on the uplink (device -> server)."""
        return self.wire_bytes(nbytes) * 8000.0 / self.uplink_bps

    def down_ms(self, nbytes: float) -> float:
        """Predicted time to put ``nbytes`` of one message on the downlink (server -> device)."""
        return self.wire_bytes(nbytes) * 8000.0 / self.downlink_bps

    def framing_ms(self) -> tuple[float, float]:
        """(uplink, downlink) time of the framing of one request and one reply."""
        return self.up_ms(self.per_message_overhead_bytes), self.down_ms(self.per_message_overhead_bytes)


@dataclass(frozen=True)
class Breakdown:
    """Predicted end-to-end latency of a split, by component (all milliseconds)."""

    device_ms: float
    uplink_ms: float
    server_ms: float
    downlink_ms: float
    rtt_ms: float
    total_ms: float
    predicted: bool = True
    overhead_ms: float = 0.0  # the per-request software overhead (in total_ms)


@dataclass(frozen=True)
class EnergyBreakdown:
    """Predicted device energy of a split, by component (all millijoules)."""

    device_mj: float
    uplink_mj: float
    downlink_mj: float
    idle_mj: float
    total_mj: float
    predicted: bool = True


@dataclass(frozen=True)
class Cut:
    """A split: which nodes run on the device, which tensors cross, and its predicted costs."""

    device_nodes: frozenset[str]
    crossing: tuple[str, ...]  # tensors sent device -> server (in graph order)
    returned: tuple[str, ...]  # model outputs produced on the server, downloaded (in graph order)
    breakdown: Breakdown
    server_nodes: frozenset[str] = field(default_factory=frozenset)
    energy: EnergyBreakdown | None = None  # present when every node has device_energy_mj
    device_memory_bytes: int = 0  # additive model: sum over device nodes
    objective: str = "latency"

    @property
    def total_ms(self) -> float:
        return self.breakdown.total_ms

    @property
    def total_mj(self) -> float:
        if self.energy is None:
            raise ValueError("this cut has no energy prediction (some node lacks device_energy_mj)")
        return self.energy.total_mj

    @property
    def cost(self) -> float:
        """The value of this cut's objective (ms for latency, mJ for energy)."""
        return self.total_mj if self.objective == "energy" else self.total_ms

    @property
    def kind(self) -> str:
        if not self.server_nodes:
            return "device-only"
        if not self.device_nodes:
            return "cloud-only"
        return "split"

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "objective": self.objective,
            "device_nodes": sorted(self.device_nodes),
            "server_nodes": sorted(self.server_nodes),
            "crossing": list(self.crossing),
            "returned": list(self.returned),
            "breakdown": self.breakdown.__dict__.copy(),
            "energy": None if self.energy is None else self.energy.__dict__.copy(),
            "device_memory_bytes": self.device_memory_bytes,
        }


# ------------------------------------------------------------------------------------------ graph indexing
class _Index:
    """Integer view of a CostGraph (node i = position in the topological order, tensor k = position)."""

    __slots__ = ("graph", "n", "names", "pos", "tprod", "tcons", "tbytes", "tout", "tnames", "in_tensors",
                 "out_tensors", "pred_mask", "preds", "_anc")

    def __init__(self, graph: CostGraph):
        self.graph = graph
        self.names = [nd.name for nd in graph.nodes]
        self.n = n = len(self.names)
        self.pos = pos = {name: i for i, name in enumerate(self.names)}
        if len(pos) != n:
            raise ValueError("CostGraph has duplicate node names")
        self.tprod: list[int] = []  # -1: model input (on the device)
        self.tcons: list[tuple[int, ...]] = []
        self.tbytes: list[int] = []
        self.tout: list[bool] = []
        self.tnames: list[str] = []
        self.in_tensors: list[list[int]] = [[] for _ in range(n)]
        self.out_tensors: list[list[int]] = [[] for _ in range(n)]  # model outputs produced by node i
        self.preds: list[set[int]] = [set() for _ in range(n)]
        for nd in graph.nodes:
            if nd.device_memory_bytes < 0:
                raise ValueError(f"node {nd.name!r}: device_memory_bytes must be >= 0")
        seen_t: set[str] = set()
        for k, te in enumerate(graph.tensors):
            if te.name in seen_t:
                raise ValueError(f"CostGraph has duplicate tensor name {te.name!r}")
            seen_t.add(te.name)
            if te.bytes < 0:
                raise ValueError(f"tensor {te.name!r} has negative size")
            if te.producer is None:
                if not te.is_input:
                    raise ValueError(f"tensor {te.name!r} has no producer and is not a model input")
                p = -1
            else:
                if te.is_input:
                    raise ValueError(f"model input {te.name!r} cannot have a producer")
                if te.producer not in pos:
                    raise ValueError(f"tensor {te.name!r}: unknown producer {te.producer!r}")
                p = pos[te.producer]
            cons = []
            for c in te.consumers:
                if c not in pos:
                    raise ValueError(f"tensor {te.name!r}: unknown consumer {c!r}")
                ci = pos[c]
                if ci <= p:
                    raise ValueError(f"nodes are not in a topological order: {c!r} consumes {te.name!r} "
                                     f"produced by {te.producer!r}")
                if ci not in cons:
                    cons.append(ci)
                    self.in_tensors[ci].append(k)
                    if p >= 0:
                        self.preds[ci].add(p)
            cons.sort()
            self.tprod.append(p)
            self.tcons.append(tuple(cons))
            self.tbytes.append(int(te.bytes))
            self.tout.append(bool(te.is_output))
            self.tnames.append(te.name)
            if te.is_output and p >= 0:
                self.out_tensors[p].append(k)
        self.pred_mask = [sum(1 << p for p in ps) for ps in self.preds]
        self._anc: list[int] | None = None

    @property
    def anc(self) -> list[int]:
        """Strict ancestors of every node, as bit masks."""
        if self._anc is None:
            anc: list[int] = []
            for i in range(self.n):
                m = self.pred_mask[i]
                for p in self.preds[i]:
                    m |= anc[p]
                anc.append(m)
            self._anc = anc
        return self._anc

    def mask_of(self, device_nodes: Iterable[str]) -> int:
        mask = 0
        for name in device_nodes:
            if name not in self.pos:
                raise ValueError(f"unknown node {name!r}")
            mask |= 1 << self.pos[name]
        return mask

    def is_valid_mask(self, mask: int) -> bool:
        on = _bits(mask, self.n)
        return all(not on[i] or all(on[p] for p in self.preds[i]) for i in range(self.n))

    def ideals(self) -> Iterator[int]:
        """Every predecessor-closed node set, as a bit mask (exponential in general: tests and tiny graphs)."""
        n, pm = self.n, self.pred_mask
        stack = [(0, 0)]
        while stack:
            i, mask = stack.pop()
            if i == n:
                yield mask
                continue
            stack.append((i + 1, mask))
            if (pm[i] & mask) == pm[i]:
                stack.append((i + 1, mask | (1 << i)))


class _Costs:
    """Per-objective coefficients: the objective of a device set D is
    sum(dev[D]) + sum(srv[S]) + sum(up[x] for x crossing) + sum(down[x] for outputs made in S) + fixed*[S!={}]."""

    __slots__ = ("dev", "srv", "up", "down", "fixed")

    def __init__(self, ix: _Index, net: Network, objective: str, memory_price: float = 0.0):
        g = ix.graph
        if objective == "latency":
            self.dev = [nd.device_ms for nd in g.nodes]
            self.srv = [nd.server_ms for nd in g.nodes]
            self.up = [net.up_ms(b) for b in ix.tbytes]
            self.down = [net.down_ms(b) if out else 0.0 for b, out in zip(ix.tbytes, ix.tout)]
            self.fixed = net.rtt_ms + sum(net.framing_ms()) + net.request_overhead_ms
        elif objective == "energy":
            _require_energy(g)
            self.dev = [float(nd.device_energy_mj) for nd in g.nodes]  # type: ignore[arg-type]
            self.srv = [net.idle_power_w * nd.server_ms for nd in g.nodes]
            self.up = [net.tx_power_w * net.up_ms(b) for b in ix.tbytes]
            self.down = [net.rx_power_w * net.down_ms(b) if out else 0.0 for b, out in zip(ix.tbytes, ix.tout)]
            fu, fd = net.framing_ms()
            self.fixed = (net.idle_power_w * (net.rtt_ms + net.request_overhead_ms) + net.tx_power_w * fu
                          + net.rx_power_w * fd)
        else:
            raise ValueError(f"unknown objective {objective!r} (expected one of {', '.join(OBJECTIVES)})")
        for name, values in (("device", self.dev), ("server", self.srv)):
            for nd, v in zip(g.nodes, values):
                if not (v >= 0 and math.isfinite(v)):
                    raise ValueError(f"node {nd.name!r}: {name} cost must be finite and >= 0, got {v!r}")
        if memory_price:
            self.dev = [d + memory_price * nd.device_memory_bytes for d, nd in zip(self.dev, g.nodes)]

    def value(self, ix: _Index, mask: int) -> float:
        n = ix.n
        on = _bits(mask, n)
        total = 0.0
        for i in range(n):
            total += self.dev[i] if on[i] else self.srv[i]
        for k, p in enumerate(ix.tprod):
            if p < 0 or on[p]:
                if not all(on[c] for c in ix.tcons[k]):
                    total += self.up[k]
            elif ix.tout[k]:
                total += self.down[k]
        if not all(on):
            total += self.fixed
        return total


def _bits(mask: int, n: int) -> list[bool]:
    """The bits of ``mask`` as a list (O(n), unlike n shifts of a big integer)."""
    return [ch == "1" for ch in reversed(format(mask, "b").zfill(n))][:n] if n else []


def _from_bits(on: Iterable[bool]) -> int:
    s = "".join("1" if b else "0" for b in on)
    return int(s[::-1], 2) if s else 0


def _require_energy(graph: CostGraph) -> None:
    missing = [nd.name for nd in graph.nodes if nd.device_energy_mj is None]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            "energy objective needs a device energy meter: no device_energy_mj for "
            f"{len(missing)} node(s) ({shown}); measure on a device with an energy meter or use objective='latency'"
        )


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r} (expected one of {', '.join(OBJECTIVES)})")


def _check_limit(memory_limit_bytes: int | None) -> None:
    if memory_limit_bytes is not None and not memory_limit_bytes >= 0:
        raise ValueError(f"memory_limit_bytes must be >= 0, got {memory_limit_bytes!r}")


# ------------------------------------------------------------------------------------------------ evaluate
def is_valid(graph: CostGraph, device_nodes: Iterable[str]) -> bool:
    """True iff ``device_nodes`` is closed under predecessors (a valid split)."""
    ix = _Index(graph)
    return ix.is_valid_mask(ix.mask_of(device_nodes))


def _cut(ix: _Index, net: Network, mask: int, objective: str = "latency") -> Cut:
    g = ix.graph
    n = ix.n
    dev_ms = srv_ms = 0.0
    dev_mj = idle_mj = 0.0
    has_energy = all(nd.device_energy_mj is not None for nd in g.nodes)
    mem = 0
    on = _bits(mask, n)
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
    _check_objective(objective)
    ix = _Index(graph)
    mask = ix.mask_of(device_nodes)
    if not ix.is_valid_mask(mask):
        bad = [ix.names[i] for i in range(ix.n) if (mask >> i) & 1 and (ix.pred_mask[i] & mask) != ix.pred_mask[i]]
        raise ValueError(f"invalid cut: device node(s) {', '.join(bad)} consume data produced on the server")
    if objective == "energy":
        _require_energy(graph)
    return _cut(ix, network, mask, objective)


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


def _flow_network(ix: _Index, costs: _Costs) -> tuple[int, int, int, dict[tuple[int, int], int], list[int]]:
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


def _source_side_push_relabel(nv: int, s: int, t: int, caps: dict[tuple[int, int], int],
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


def _source_side_networkx(nv: int, s: int, t: int, caps: dict[tuple[int, int], int],
                          rank: list[int] | None = None) -> list[int]:
    """Same contract as :func:`_source_side_push_relabel`, with networkx's preflow-push (cross-check / reference)."""
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


_MAX_FLOW = {"push_relabel": _source_side_push_relabel, "networkx": _source_side_networkx}


def _min_cut_mask(ix: _Index, costs: _Costs, solver: str = "push_relabel") -> int:
    """Device set (bit mask) minimising f = objective without the fixed round-trip cost, by one max-flow."""
    n = ix.n
    if n == 0:
        return 0
    nv, s, t, caps, rank = _flow_network(ix, costs)
    level = _MAX_FLOW[solver](nv, s, t, caps, rank)
    if level[t] >= 0:  # cannot happen with exact arithmetic
        raise RuntimeError("max-flow did not separate source and sink")
    return _from_bits(level[v] >= 0 for v in range(n))


def _best_unconstrained(ix: _Index, costs: _Costs, solver: str = "push_relabel") -> int:
    """Exact optimum including the fixed round-trip cost (see the module docstring for the argument)."""
    full = (1 << ix.n) - 1
    m = _min_cut_mask(ix, costs, solver)
    if m == full:
        return full
    return full if sum(costs.dev) <= costs.value(ix, m) else m  # value(full) == sum(dev)


def _exact_memory(ix: _Index, costs: _Costs, mem: list[int], limit: int) -> int:
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


def _lagrangian_memory(ix: _Index, net: Network, objective: str, costs: _Costs, mem: list[int], limit: int,
                       first: int, solver: str) -> int:
    """Heuristic for large graphs: binary search on a price per device byte; best feasible cut seen."""

    def mem_of(mask: int) -> int:
        return sum(m for m, on in zip(mem, _bits(mask, ix.n)) if on)

    best_mask, best_val = 0, costs.value(ix, 0)  # cloud-only always fits
    if mem_of(first) <= limit:
        return first
    positive = [m for m in mem if m > 0]
    finite_sum = sum(costs.dev) + sum(costs.srv) + sum(costs.up) + sum(costs.down) + costs.fixed
    hi = (finite_sum + 1.0) / min(positive)  # at this price no node with memory stays on the device
    lo = hi * 2.0**-60  # (lambda = 0, the unconstrained optimum, is known to be infeasible)
    for _ in range(_LAGRANGE_ITERATIONS):
        mid = math.sqrt(lo * hi)  # bisect on a log scale: the useful price spans many decades
        priced = _Costs(ix, net, objective, memory_price=mid)
        m = _best_unconstrained(ix, priced, solver)
        if mem_of(m) <= limit:
            hi = mid
            v = costs.value(ix, m)
            if v < best_val:
                best_val, best_mask = v, m
        else:
            lo = mid
        if hi <= lo * (1 + 1e-9):
            break
    return _greedy_extend(ix, costs, mem, limit, best_mask)


def _greedy_extend(ix: _Index, costs: _Costs, mem: list[int], limit: int, mask: int) -> int:
    """Heuristic repair of a feasible cut: walk the nodes in topological order, moving each one that keeps
    the set valid and within ``limit`` onto the device (incremental cost), and return the best set seen.
    The Lagrangian cuts jump between few breakpoints; this fills the memory left between them."""
    n = ix.n
    on = _bits(mask, n)
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


# ----------------------------------------------------------------------------------------------- public API
def plan(graph: CostGraph, network: Network, objective: str = "latency",
         memory_limit_bytes: int | None = None, *, solver: str = "push_relabel") -> Cut:
    """The best split for ``objective`` ("latency" or "energy"), optionally under a device memory limit.

    Exact (min cut + the round-trip comparison) without a memory limit, exact with one up to
    :data:`EXACT_MEMORY_MAX_NODES` nodes, a Lagrangian heuristic above (see the module docstring)."""
    _check_objective(objective)
    _check_limit(memory_limit_bytes)
    if solver not in _MAX_FLOW:
        raise ValueError(f"unknown solver {solver!r} (expected one of {', '.join(_MAX_FLOW)})")
    ix = _Index(graph)
    costs = _Costs(ix, network, objective)
    mask = _best_unconstrained(ix, costs, solver)
    if memory_limit_bytes is not None:
        mem = [nd.device_memory_bytes for nd in graph.nodes]
        if sum(m for m, on in zip(mem, _bits(mask, ix.n)) if on) > memory_limit_bytes:
            if ix.n <= EXACT_MEMORY_MAX_NODES:
                mask = _exact_memory(ix, costs, mem, memory_limit_bytes)
            else:
                mask = _lagrangian_memory(ix, network, objective, costs, mem, memory_limit_bytes, mask,
                                          solver)
    return _cut(ix, network, mask, objective)


def brute_force(graph: CostGraph, network: Network, objective: str = "latency",
                memory_limit_bytes: int | None = None) -> Cut:
    """Reference solver: enumerate every valid device set and evaluate it (exponential; for tests)."""
    _check_objective(objective)
    _check_limit(memory_limit_bytes)
    ix = _Index(graph)
    if objective == "energy":
        _require_energy(graph)
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
    ix = _Index(graph)
    n = ix.n
    closure = [0] * n  # ancestors(v) | {v} as bit masks
    for i in range(n):
        m = 1 << i
        for p in ix.preds[i]:
            m |= closure[p]
        closure[i] = m
    costs = _Costs(ix, network, "latency")
    masks = [(1 << n) - 1, 0, *closure, _best_unconstrained(ix, costs)]
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
