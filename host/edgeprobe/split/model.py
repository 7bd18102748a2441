"""The split planner's cost model: the cost graph, the network, a cut and its predicted costs.

Pure Python, standard library only (torch is never imported here).

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator

OBJECTIVES = ("latency", "energy")


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
class Index:
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
        on = bits(mask, self.n)
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


class Costs:
    """Per-objective coefficients: the objective of a device set D is
    sum(dev[D]) + sum(srv[S]) + sum(up[x] for x crossing) + sum(down[x] for outputs made in S) + fixed*[S!={}]."""

    __slots__ = ("dev", "srv", "up", "down", "fixed")

    def __init__(self, ix: Index, net: Network, objective: str, memory_price: float = 0.0):
        g = ix.graph
        if objective == "latency":
            self.dev = [nd.device_ms for nd in g.nodes]
            self.srv = [nd.server_ms for nd in g.nodes]
            self.up = [net.up_ms(b) for b in ix.tbytes]
            self.down = [net.down_ms(b) if out else 0.0 for b, out in zip(ix.tbytes, ix.tout)]
            self.fixed = net.rtt_ms + sum(net.framing_ms()) + net.request_overhead_ms
        elif objective == "energy":
            require_energy(g)
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

    def value(self, ix: Index, mask: int) -> float:
        n = ix.n
        on = bits(mask, n)
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


def bits(mask: int, n: int) -> list[bool]:
    """The bits of ``mask`` as a list (O(n), unlike n shifts of a big integer)."""
    return [ch == "1" for ch in reversed(format(mask, "b").zfill(n))][:n] if n else []


def from_bits(on: Iterable[bool]) -> int:
    s = "".join("1" if b else "0" for b in on)
    return int(s[::-1], 2) if s else 0


def require_energy(graph: CostGraph) -> None:
    missing = [nd.name for nd in graph.nodes if nd.device_energy_mj is None]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            "energy objective needs a device energy meter: no device_energy_mj for "
            f"{len(missing)} node(s) ({shown}); measure on a device with an energy meter or use objective='latency'"
        )


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r} (expected one of {', '.join(OBJECTIVES)})")


def check_limit(memory_limit_bytes: int | None) -> None:
    if memory_limit_bytes is not None and not memory_limit_bytes >= 0:
        raise ValueError(f"memory_limit_bytes must be >= 0, got {memory_limit_bytes!r}")
