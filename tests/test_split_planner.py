"""The split planner (edgeprobe.split.planner): exact min cut vs brute force on random cost graphs, the
hand-checkable cases (small activation, skip connection charged once, cloud-only, device-only), the energy
and memory objectives, and the bandwidth policy. Pure Python: no torch, no device."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeprobe.split.planner import (
    CostGraph,
    Network,
    NodeCost,
    TensorEdge,
    brute_force,
    candidates,
    evaluate,
    is_valid,
    plan,
    policy,
)

PROPERTY = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SMALL = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-9)


# ------------------------------------------------------------------------------------------------ strategies
# Costs mix zeros, tiny and huge magnitudes (ties and exactness of the integer scaling) with ordinary values.
COST = st.one_of(st.sampled_from([0.0, 0.0, 1e-9, 1e-3, 0.1, 1.0, 10.0, 1e3, 1e6]),
                 st.floats(0, 100, allow_nan=False, allow_infinity=False))
NBYTES = st.one_of(st.sampled_from([0, 0, 1, 1000, 10**6]), st.integers(0, 2 * 10**6))


@st.composite
def networks(draw):
    return Network(
        uplink_bps=draw(st.sampled_from([1e3, 1e5, 1.1e6, 5.85e6, 18.88e6, 1e9, 1e12])),
        downlink_bps=draw(st.sampled_from([1e4, 1e6, 20e6, 1e10])),
        rtt_ms=draw(st.sampled_from([0.0, 0.0, 5.0, 40.0, 1e4])),
        per_message_overhead_bytes=draw(st.sampled_from([0, 0, 64, 5000])),
        tx_power_w=draw(st.sampled_from([0.0, 0.8, 2.5])),
        rx_power_w=draw(st.sampled_from([0.0, 0.5, 1.2])),
        idle_power_w=draw(st.sampled_from([0.0, 0.0, 0.3])),
        packet_overhead_bytes=draw(st.sampled_from([0, 52])),
        request_overhead_ms=draw(st.sampled_from([0.0, 0.7])),
    )


@st.composite
def cost_graphs(draw, max_nodes=12, chain=False, energy=False, memory=False):
    """Random chains, or random DAGs (edges i -> j for i < j, several inputs and outputs, tensors with
    several consumers, nodes without inputs, inputs without consumers)."""
    n = draw(st.integers(1, max_nodes))
    names = [f"n{i}" for i in range(n)]
    nodes = tuple(
        NodeCost(names[i], device_ms=draw(COST), server_ms=draw(COST),
                 device_energy_mj=draw(COST) if energy else None,
                 device_memory_bytes=draw(st.integers(0, 1000)) if memory else 0)
        for i in range(n)
    )
    tensors = []
    if chain:
        tensors.append(TensorEdge("x", None, (names[0],), draw(NBYTES), is_input=True))
        for i in range(n):
            last = i == n - 1
            tensors.append(TensorEdge(f"t{i}", names[i], () if last else (names[i + 1],), draw(NBYTES),
                                      is_output=last))
        return CostGraph(nodes, tuple(tensors))
    for k in range(draw(st.integers(1, 3))):
        cons = draw(st.lists(st.sampled_from(names), unique=True, max_size=4))
        tensors.append(TensorEdge(f"x{k}", None, tuple(cons), draw(NBYTES), is_input=True,
                                  is_output=draw(st.booleans()) and draw(st.booleans())))
    for i in range(n):
        for k in range(draw(st.integers(0 if i < n - 1 else 1, 2))):
            later = names[i + 1:]
            cons = draw(st.lists(st.sampled_from(later), unique=True, max_size=4)) if later else []
            out = not cons or draw(st.integers(0, 4)) == 0
            tensors.append(TensorEdge(f"t{i}_{k}", names[i], tuple(cons), draw(NBYTES), is_output=out))
    return CostGraph(nodes, tuple(tensors))


def closed_under_predecessors(graph: CostGraph, device: frozenset[str]) -> bool:
    """Independent validity check: no tensor goes server -> device."""
    return all(t.producer is None or t.producer in device or not (set(t.consumers) & device)
               for t in graph.tensors)


def independent_latency(graph: CostGraph, net: Network, device: frozenset[str]) -> dict[str, float]:
    """The latency model of the planner's docstring, written again from the text (not from its code): device
    costs of device nodes; every tensor on the device (a model input or made by a device node) read by a server
    node goes up once; server costs of server nodes; every model output made on the server comes down; one
    request and one reply (framing, RTT, software time) iff anything runs on the server."""
    wire = 1.0 + net.packet_overhead_bytes / net.mss_bytes
    dev = sum(nd.device_ms for nd in graph.nodes if nd.name in device)
    srv = sum(nd.server_ms for nd in graph.nodes if nd.name not in device)
    on_device = [t for t in graph.tensors if t.producer is None or t.producer in device]
    up_bytes = sum(t.bytes for t in on_device if any(c not in device for c in t.consumers))
    down_bytes = sum(t.bytes for t in graph.tensors
                     if t.is_output and t.producer is not None and t.producer not in device)
    uses_server = any(nd.name not in device for nd in graph.nodes)
    frame = net.per_message_overhead_bytes if uses_server else 0
    up = (up_bytes + frame) * wire * 8000.0 / net.uplink_bps
    down = (down_bytes + frame) * wire * 8000.0 / net.downlink_bps
    fixed = (net.rtt_ms + net.request_overhead_ms) if uses_server else 0.0
    return {"device_ms": dev, "uplink_ms": up, "server_ms": srv, "downlink_ms": down,
            "total_ms": dev + up + srv + down + fixed}


def independent_optimum(graph: CostGraph, net: Network) -> float:
    """Every subset of nodes (2^n), kept when closed under predecessors, priced by independent_latency."""
    names = [nd.name for nd in graph.nodes]
    best = math.inf
    for bits in range(1 << len(names)):
        device = frozenset(nm for i, nm in enumerate(names) if bits >> i & 1)
        if closed_under_predecessors(graph, device):
            best = min(best, independent_latency(graph, net, device)["total_ms"])
    return best


def check_against_brute_force(graph, net, objective="latency", memory_limit_bytes=None):
    got = plan(graph, net, objective=objective, memory_limit_bytes=memory_limit_bytes)
    want = brute_force(graph, net, objective=objective, memory_limit_bytes=memory_limit_bytes)
    assert got.cost == approx(want.cost)
    assert closed_under_predecessors(graph, got.device_nodes)
    assert got.device_nodes | got.server_nodes == {nd.name for nd in graph.nodes}
    if memory_limit_bytes is not None:
        assert got.device_memory_bytes <= memory_limit_bytes
    # evaluate() agrees with the plan's own breakdown
    again = evaluate(graph, net, got.device_nodes, objective=objective)
    assert again.cost == approx(got.cost)
    return got, want


# --------------------------------------------------------------------------------------- property-based
@PROPERTY
@given(cost_graphs(), networks())
def test_dag_plan_equals_brute_force(graph, net):
    got, _ = check_against_brute_force(graph, net)
    b = got.breakdown
    # every component and the total against the model recomputed from its definition, and the optimum against
    # an enumeration of all 2^n subsets priced that way (the planner's brute_force shares its evaluator)
    want = independent_latency(graph, net, got.device_nodes)
    assert b.predicted
    for key in ("device_ms", "uplink_ms", "server_ms", "downlink_ms", "total_ms"):
        assert getattr(b, key) == approx(want[key]), key
    if len(graph.nodes) <= 10:
        assert got.total_ms == approx(independent_optimum(graph, net))
    # networkx's preflow-push on the same network gives the same optimum
    assert plan(graph, net, solver="networkx").total_ms == approx(got.total_ms)


@PROPERTY
@given(cost_graphs(chain=True), networks())
def test_chain_plan_equals_brute_force_and_is_a_prefix(graph, net):
    got, _ = check_against_brute_force(graph, net)
    k = len(got.device_nodes)
    assert got.device_nodes == {nd.name for nd in graph.nodes[:k]}
    # for a chain the candidate table holds every boundary, and its best entry is the optimum
    table = candidates(graph, net)
    assert len(table) == len(graph.nodes) + 1
    assert table[0].total_ms == approx(got.total_ms)


@PROPERTY
@given(cost_graphs(energy=True), networks())
def test_energy_plan_equals_brute_force(graph, net):
    got, _ = check_against_brute_force(graph, net, objective="energy")
    assert got.objective == "energy" and got.energy is not None and got.energy.predicted


@PROPERTY
@given(cost_graphs(memory=True), networks(), st.floats(0, 1.1))
def test_memory_limited_plan_equals_brute_force(graph, net, fraction):
    limit = int(fraction * sum(nd.device_memory_bytes for nd in graph.nodes))
    check_against_brute_force(graph, net, memory_limit_bytes=limit)


@SMALL
@given(cost_graphs(memory=True, energy=True), networks(), st.floats(0, 1.1))
def test_memory_limited_energy_plan_equals_brute_force(graph, net, fraction):
    limit = int(fraction * sum(nd.device_memory_bytes for nd in graph.nodes))
    check_against_brute_force(graph, net, objective="energy", memory_limit_bytes=limit)


@st.composite
def layered_dags(draw, layers=(10, 40)):
    """Larger DAGs (beyond brute force): layers of 1-3 parallel nodes, each layer reading the previous one,
    plus random skip tensors -- for cross-checking the push-relabel solver against networkx."""
    nl = draw(st.integers(*layers))
    widths = [draw(st.integers(1, 3)) for _ in range(nl)]
    names, layer_nodes = [], []
    for li, w in enumerate(widths):
        layer_nodes.append([f"l{li}_{j}" for j in range(w)])
        names.extend(layer_nodes[-1])
    nodes = tuple(NodeCost(nm, draw(COST), draw(COST)) for nm in names)
    tensors = [TensorEdge("x", None, tuple(layer_nodes[0]), draw(NBYTES), is_input=True)]
    for li, layer in enumerate(layer_nodes):
        nxt = layer_nodes[li + 1] if li + 1 < nl else []
        rest = [nm for lay in layer_nodes[li + 2:] for nm in lay]
        for nm in layer:
            tensors.append(TensorEdge(f"{nm}.out", nm, tuple(nxt), draw(NBYTES), is_output=not nxt))
            if rest and draw(st.booleans()):
                cons = draw(st.lists(st.sampled_from(rest), unique=True, min_size=1, max_size=3))
                tensors.append(TensorEdge(f"{nm}.skip", nm, tuple(cons), draw(NBYTES)))
    return CostGraph(nodes, tuple(tensors))


@SMALL
@given(layered_dags(), networks())
def test_push_relabel_matches_networkx_on_larger_dags(graph, net):
    got = plan(graph, net)
    ref = plan(graph, net, solver="networkx")
    assert got.total_ms == approx(ref.total_ms)
    assert closed_under_predecessors(graph, got.device_nodes)
    # nothing in the candidate table beats the plan
    assert min(c.total_ms for c in candidates(graph, net)) == approx(got.total_ms)


@settings(max_examples=40, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(layered_dags(layers=(12, 30)), networks(), st.floats(0.05, 0.9), st.randoms(use_true_random=False))
def test_memory_heuristic_on_larger_dags_is_feasible_and_never_beats_the_optimum(graph, net, fraction, rnd):
    graph = CostGraph(tuple(NodeCost(nd.name, nd.device_ms, nd.server_ms, device_memory_bytes=rnd.randint(0, 1000))
                            for nd in graph.nodes), graph.tensors)
    limit = int(fraction * sum(nd.device_memory_bytes for nd in graph.nodes))
    got = plan(graph, net, memory_limit_bytes=limit)  # > 20 nodes: the Lagrangian heuristic
    best = brute_force(graph, net, memory_limit_bytes=limit)
    assert got.device_memory_bytes <= limit and closed_under_predecessors(graph, got.device_nodes)
    assert got.total_ms >= best.total_ms - 1e-9 * max(1.0, best.total_ms)
    assert got.total_ms <= evaluate(graph, net, ()).total_ms + 1e-9  # never worse than cloud-only


# ------------------------------------------------------------------------------------------ hand examples
FOUR_G = Network(uplink_bps=5.85e6, downlink_bps=20e6, rtt_ms=30.0)


def chain(specs, input_bytes):
    """specs: (name, device_ms, server_ms, output_bytes) per layer."""
    nodes = tuple(NodeCost(nm, d, s) for nm, d, s, _ in specs)
    tensors = [TensorEdge("x", None, (specs[0][0],), input_bytes, is_input=True)]
    for i, (nm, _, _, nbytes) in enumerate(specs):
        last = i == len(specs) - 1
        tensors.append(TensorEdge(f"{nm}.out", nm, () if last else (specs[i + 1][0],), nbytes, is_output=last))
    return CostGraph(nodes, tuple(tensors))


def test_chain_cuts_after_the_small_activation():
    g = chain([("conv1", 5.0, 0.5, 800_000), ("pool", 5.0, 0.5, 10_000), ("conv2", 40.0, 0.5, 400_000),
               ("fc", 40.0, 0.5, 4_000)], input_bytes=602_112)
    cut = plan(g, FOUR_G)
    assert cut.device_nodes == {"conv1", "pool"} and cut.kind == "split"
    assert cut.crossing == ("pool.out",) and cut.returned == ("fc.out",)
    b = cut.breakdown
    assert b.device_ms == approx(10.0) and b.server_ms == approx(1.0) and b.rtt_ms == 30.0
    assert b.uplink_ms == approx(10_000 * 8 / 5.85e6 * 1000) and b.downlink_ms == approx(4_000 * 8 / 20e6 * 1000)
    assert b.total_ms == approx(10.0 + 10_000 * 8 / 5.85e3 + 1.0 + 4_000 * 8 / 20e3 + 30.0)
    assert b.predicted
    assert cut.total_ms == approx(brute_force(g, FOUR_G).total_ms)
    table = candidates(g, FOUR_G)
    assert [c.total_ms for c in table] == sorted(c.total_ms for c in table)
    assert table[0].device_nodes == cut.device_nodes
    assert {c.kind for c in table} == {"device-only", "cloud-only", "split"} and len(table) == 5


def skip_block(parallel: bool) -> CostGraph:
    """stem -> a; a feeds two server-side consumers. parallel=False: ResNet-style (a -> body -> add, and a ->
    add); parallel=True: inception-style (a -> left, a -> right, both -> merge)."""
    nodes = (NodeCost("stem", 1.0, 0.1), NodeCost("b1", 50.0, 1.0), NodeCost("b2", 50.0, 1.0),
             NodeCost("merge", 50.0, 1.0))
    if parallel:
        a_consumers, mid = ("b1", "b2"), (TensorEdge("t1", "b1", ("merge",), 500),
                                          TensorEdge("t2", "b2", ("merge",), 500))
    else:
        a_consumers, mid = ("b1", "merge"), (TensorEdge("t1", "b1", ("b2",), 500),
                                             TensorEdge("t2", "b2", ("merge",), 500))
    tensors = (TensorEdge("x", None, ("stem",), 1_000_000, is_input=True),
               TensorEdge("a", "stem", a_consumers, 20_000), *mid,
               TensorEdge("y", "merge", (), 4_000, is_output=True))
    return CostGraph(nodes, tensors)


@pytest.mark.parametrize("parallel", [False, True], ids=["residual", "parallel-branches"])
def test_tensor_with_two_server_consumers_is_charged_once(parallel):
    g = skip_block(parallel)
    cut = plan(g, FOUR_G)
    assert cut.device_nodes == {"stem"} and cut.crossing == ("a",)
    assert cut.breakdown.uplink_ms == approx(FOUR_G.up_ms(20_000))  # one transfer, not two
    assert cut.total_ms == approx(1.0 + FOUR_G.up_ms(20_000) + 3.0 + FOUR_G.down_ms(4_000) + 30.0)
    assert cut.total_ms == approx(brute_force(g, FOUR_G).total_ms)
    assert plan(g, FOUR_G, solver="networkx").total_ms == approx(cut.total_ms)


def test_cloud_only_when_the_uplink_is_fast_and_the_device_slow():
    g = chain([("a", 100.0, 1.0, 1_000_000), ("b", 100.0, 1.0, 1_000)], input_bytes=100_000)
    net = Network(uplink_bps=1e12, downlink_bps=1e9, rtt_ms=5.0)
    cut = plan(g, net)
    assert cut.kind == "cloud-only" and cut.device_nodes == frozenset()
    assert cut.crossing == ("x",) and cut.returned == ("b.out",)
    assert cut.breakdown.device_ms == 0 and cut.breakdown.rtt_ms == 5.0
    assert cut.total_ms == approx(net.up_ms(100_000) + 2.0 + net.down_ms(1_000) + 5.0)


def test_device_only_when_the_round_trip_is_huge():
    g = chain([("a", 100.0, 1.0, 1_000), ("b", 100.0, 1.0, 1_000)], input_bytes=1_000)
    net = Network(uplink_bps=1e9, downlink_bps=1e9, rtt_ms=1e6)
    cut = plan(g, net)
    assert cut.kind == "device-only" and cut.crossing == () and cut.returned == ()
    assert cut.breakdown.rtt_ms == 0 and cut.total_ms == approx(200.0)


def test_round_trip_is_paid_once_and_decides_between_split_and_device_only():
    # Without the RTT the best split saves 10 ms over device-only; a 10.5 ms RTT must flip the decision,
    # a 9.5 ms one must not (the min cut alone cannot see the fixed cost).
    g = chain([("a", 10.0, 10.0, 0), ("b", 20.0, 10.0, 0)], input_bytes=0)
    for rtt, kind in ((9.5, "split"), (10.5, "device-only")):
        cut = plan(g, Network(1e6, 1e6, rtt))
        assert cut.kind == kind
        assert cut.total_ms == approx(brute_force(g, Network(1e6, 1e6, rtt)).total_ms)


def test_framing_is_charged_once_per_message_and_headers_per_packet():
    net = Network(8e3, 8e3, 0.0, per_message_overhead_bytes=100)  # 1 byte/ms
    assert net.up_ms(900) == 900.0 and net.framing_ms() == (100.0, 100.0)
    g = skip_block(parallel=True)
    cloud = evaluate(g, net, {"stem", "b1"})
    bare = evaluate(g, Network(8e3, 8e3, 0.0), {"stem", "b1"})
    assert cloud.crossing == ("a", "t1")  # one request and one reply, whatever the number of tensors crossing
    assert cloud.breakdown.uplink_ms == approx(bare.breakdown.uplink_ms + 100.0)
    assert cloud.breakdown.downlink_ms == approx(bare.breakdown.downlink_ms + 100.0)
    assert evaluate(g, net, {n.name for n in g.nodes}).total_ms == approx(
        evaluate(g, Network(8e3, 8e3, 0.0), {n.name for n in g.nodes}).total_ms)  # device only: no message
    hdr = Network(8e3, 8e3, 0.0, packet_overhead_bytes=52, mss_bytes=1448)
    assert hdr.up_ms(1448) == approx(1500.0) and hdr.wire_bytes(2896) == approx(3000.0)
    with pytest.raises(ValueError, match="mss_bytes"):
        Network(1, 1, 0, mss_bytes=0)


def test_evaluate_rejects_invalid_cuts_and_unknown_nodes():
    g = skip_block(parallel=False)
    with pytest.raises(ValueError, match="invalid cut"):
        evaluate(g, FOUR_G, {"stem", "b2"})  # b2 reads t1 from b1, on the server
    with pytest.raises(ValueError, match="unknown node"):
        evaluate(g, FOUR_G, {"nope"})
    assert not is_valid(g, {"b1"}) and is_valid(g, {"stem", "b1"}) and is_valid(g, set())
    both = evaluate(g, FOUR_G, {"stem", "b1", "b2", "merge"})
    assert both.kind == "device-only" and both.total_ms == approx(151.0)


def test_graph_validation():
    n = (NodeCost("a", 1, 1), NodeCost("b", 1, 1))
    with pytest.raises(ValueError, match="topological"):
        plan(CostGraph(n, (TensorEdge("t", "b", ("a",), 1),)), FOUR_G)
    with pytest.raises(ValueError, match="not a model input"):
        plan(CostGraph(n, (TensorEdge("t", None, ("a",), 1),)), FOUR_G)
    with pytest.raises(ValueError, match="unknown consumer"):
        plan(CostGraph(n, (TensorEdge("t", "a", ("c",), 1),)), FOUR_G)
    with pytest.raises(ValueError, match="must be > 0"):
        Network(0, 1, 1)
    with pytest.raises(ValueError, match="unknown objective"):
        plan(CostGraph(n, ()), FOUR_G, objective="carbon")
    assert plan(CostGraph((), ()), FOUR_G).total_ms == 0.0


def test_energy_objective_needs_a_meter():
    g = chain([("a", 1.0, 1.0, 10), ("b", 1.0, 1.0, 10)], input_bytes=10)
    with pytest.raises(ValueError, match="energy objective needs a device energy meter"):
        plan(g, FOUR_G, objective="energy")
    with pytest.raises(ValueError, match="energy meter"):
        evaluate(g, FOUR_G, {"a"}, objective="energy")
    assert plan(g, FOUR_G).energy is None


def test_energy_breakdown_by_hand():
    nodes = (NodeCost("a", 10.0, 1.0, device_energy_mj=30.0), NodeCost("b", 10.0, 2.0, device_energy_mj=500.0))
    tensors = (TensorEdge("x", None, ("a",), 100_000, is_input=True), TensorEdge("h", "a", ("b",), 1_000),
               TensorEdge("y", "b", (), 2_000, is_output=True))
    g = CostGraph(nodes, tensors)
    net = Network(uplink_bps=8e6, downlink_bps=16e6, rtt_ms=20.0, tx_power_w=2.0, rx_power_w=1.0,
                  idle_power_w=0.5)
    cut = plan(g, net, objective="energy")
    assert cut.device_nodes == {"a"} and cut.objective == "energy"
    e = cut.energy
    assert e.device_mj == approx(30.0) and e.uplink_mj == approx(2.0 * 1.0)  # 1000 B at 1 B/us = 1 ms
    assert e.downlink_mj == approx(1.0 * 1.0) and e.idle_mj == approx(0.5 * (2.0 + 20.0))
    assert e.total_mj == approx(30.0 + 2.0 + 1.0 + 11.0) and cut.cost == e.total_mj and e.predicted
    assert cut.total_ms == approx(10.0 + 1.0 + 2.0 + 1.0 + 20.0)  # the latency breakdown comes along


def test_memory_limit_forces_a_smaller_head():
    g = CostGraph(
        tuple(NodeCost(f"l{i}", 1.0, 10.0, device_memory_bytes=100) for i in range(4)),
        (TensorEdge("x", None, ("l0",), 1000, is_input=True),
         *(TensorEdge(f"t{i}", f"l{i}", (f"l{i + 1}",), 1000) for i in range(3)),
         TensorEdge("y", "l3", (), 10, is_output=True)))
    assert plan(g, FOUR_G).kind == "device-only"
    cut = plan(g, FOUR_G, memory_limit_bytes=250)
    assert cut.device_nodes == {"l0", "l1"} and cut.device_memory_bytes == 200
    assert plan(g, FOUR_G, memory_limit_bytes=0).kind == "cloud-only"
    with pytest.raises(ValueError):
        plan(g, FOUR_G, memory_limit_bytes=-1)


def test_memory_limit_heuristic_on_a_large_chain_is_feasible_and_close():
    n = 60  # above EXACT_MEMORY_MAX_NODES: the Lagrangian heuristic; a chain has only n + 1 valid cuts
    specs = [(f"l{i}", 1.0 + (i % 7), 0.1, 5000 if i % 5 else 200) for i in range(n)]
    g = chain(specs, input_bytes=100_000)
    g = CostGraph(tuple(NodeCost(nd.name, nd.device_ms, nd.server_ms, device_memory_bytes=1000 + 37 * i)
                        for i, nd in enumerate(g.nodes)), g.tensors)
    net = Network(2e6, 20e6, 10.0)
    total_mem = sum(nd.device_memory_bytes for nd in g.nodes)
    for frac in (0.1, 0.3, 0.6):
        limit = int(frac * total_mem)
        got = plan(g, net, memory_limit_bytes=limit)
        best = brute_force(g, net, memory_limit_bytes=limit)
        assert got.device_memory_bytes <= limit
        assert got.total_ms >= best.total_ms - 1e-9
        assert got.total_ms <= best.total_ms * 1.05


def test_policy_returns_only_change_points():
    g = chain([("conv1", 5.0, 0.5, 800_000), ("pool", 5.0, 0.5, 10_000), ("conv2", 40.0, 0.5, 400_000),
               ("fc", 40.0, 0.5, 4_000)], input_bytes=602_112)
    bws = [1e4 * 10 ** (k / 8) for k in range(8 * 6 + 1)]  # 10 kbit/s .. 10 Gbit/s
    table = policy(g, bws, downlink_bps=20e6, rtt_ms=30.0)
    assert table[0][0] == bws[0]
    kinds = [cut.kind for _, cut in table]
    assert kinds[0] == "device-only" and kinds[-1] == "cloud-only" and "split" in kinds
    for (_, a), (_, b) in zip(table, table[1:]):
        assert a.device_nodes != b.device_nodes
    # every bandwidth's own plan is the entry in force at that bandwidth
    change = {bw: cut for bw, cut in table}
    current = None
    for bw in bws:
        current = change.get(bw, current)
        assert plan(g, Network(bw, 20e6, 30.0)).device_nodes == current.device_nodes
    assert len(table) < len(bws)


def test_cut_serializes():
    import json

    cut = plan(skip_block(parallel=True), FOUR_G)
    d = json.loads(json.dumps(cut.to_dict()))
    assert d["kind"] == "split" and d["crossing"] == ["a"] and d["breakdown"]["predicted"] is True
    assert math.isclose(d["breakdown"]["total_ms"], cut.total_ms)


def test_planner_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, edgeprobe.split.planner as p; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
