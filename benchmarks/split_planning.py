"""Planning time of the split planner on a synthetic 1000-node DAG (goal: <= 100 ms).

The DAG is layered with skip edges and parallel branches, like a residual CNN (see ``synthetic_dag``):
about 2000 tensors, many read by several parallel nodes. Costs are random but shaped like a real model
(device 5-20x slower than the server, activations shrinking with depth). The number printed is the median
wall time of ``plan(graph, network)`` (latency objective, 4G-like link) over 5 runs; the size of the flow
network after the planner's exact reductions is printed too.

    python benchmarks/split_planning.py [--nodes 1000] [--repeats 5] [--seed 0] [--check]

``--check`` also solves with networkx's preflow_push and fails if the optimum differs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

try:
    from edgeprobe.split.planner import CostGraph, Network, NodeCost, TensorEdge, plan
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))
    from edgeprobe.split.planner import CostGraph, Network, NodeCost, TensorEdge, plan

GOAL_MS = 100.0


def synthetic_dag(n: int = 1000, seed: int = 0, block_layers: int = 8) -> CostGraph:
    """A random layered DAG shaped like a residual CNN with parallel branches.

    Layers are grouped in blocks; a block's first and last layers have one node, the layers between have
    1-3 parallel nodes (branches). Every node's main tensor is read by *all* nodes of the next layer (so a
    tensor read by parallel branches needs the planner's charged-once auxiliary vertex), and most nodes also
    send a skip tensor to a random node further down the same block (closed by the block's last node, like a
    residual add). About 2 tensors per node. Activations shrink with depth; the device is 5-20x slower than
    the server."""
    rng = random.Random(seed)
    layers: list[list[int]] = []
    count = 0
    while count < n:
        pos = len(layers) % block_layers
        width = 1 if pos in (0, block_layers - 1) else rng.choice((1, 2, 2, 3))
        width = min(width, n - count)
        layers.append(list(range(count, count + width)))
        count += width
    names = [f"op{i}" for i in range(n)]
    layer_of = {v: li for li, layer in enumerate(layers) for v in layer}
    depth = [layer_of[i] / max(1, len(layers) - 1) for i in range(n)]
    nodes = []
    for i in range(n):
        d = rng.expovariate(2.0)
        nodes.append(NodeCost(names[i], device_ms=d, server_ms=d / rng.uniform(5, 20),
                              device_memory_bytes=rng.randint(1, 10**6)))

    def act_bytes(i: int) -> int:
        return max(64, int(rng.uniform(0.5, 1.0) * 800_000 * 0.002 ** depth[i]))

    tensors = [TensorEdge("x", None, tuple(names[v] for v in layers[0]), 3 * 224 * 224 * 4, is_input=True)]
    for li, layer in enumerate(layers):
        nxt = layers[li + 1] if li + 1 < len(layers) else []
        block_end = (li // block_layers + 1) * block_layers - 1
        for v in layer:
            tensors.append(TensorEdge(f"{names[v]}.out", names[v], tuple(names[c] for c in nxt), act_bytes(v),
                                      is_output=not nxt))
            later = [c for lj in range(li + 2, min(block_end, len(layers) - 1) + 1) for c in layers[lj]]
            for k, prob in enumerate((0.9, 0.4)):
                if later and rng.random() < prob:
                    tensors.append(TensorEdge(f"{names[v]}.skip{k}", names[v], (names[rng.choice(later)],),
                                              act_bytes(v)))
    return CostGraph(tuple(nodes), tuple(tensors))


def main(argv: list[str] | None = None) -> float:
    """Print the planning time; ``argv`` defaults to no arguments (safe to call from another script)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="also solve with networkx and compare the optimum")
    args = ap.parse_args([] if argv is None else argv)
    graph = synthetic_dag(args.nodes, args.seed)
    net = Network(uplink_bps=5.85e6, downlink_bps=20e6, rtt_ms=30.0)
    times, cpu = [], []
    cut = None
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        cut = plan(graph, net)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    med = statistics.median(times)
    assert cut is not None
    ref = None
    if args.check:
        t0 = time.perf_counter()
        ref = plan(graph, net, solver="networkx")
        ref_ms = (time.perf_counter() - t0) * 1000
    print(f"split planning, synthetic DAG: {len(graph.nodes)} nodes, {len(graph.tensors)} tensors, "
          f"{sum(len(t.consumers) for t in graph.tensors)} tensor->consumer edges; "
          f"flow network after exact reductions: {_network_size(graph, net)}")
    print(f"  chosen: {cut.kind}, {len(cut.device_nodes)} device nodes, {len(cut.crossing)} crossing tensors, "
          f"predicted {cut.total_ms:.2f} ms (device-only {sum(nd.device_ms for nd in graph.nodes):.2f} ms)")
    print(f"  planning time (latency objective, median of {args.repeats}): {med:.1f} ms wall "
          f"(min {min(times):.1f}, max {max(times):.1f}); {statistics.median(cpu):.1f} ms CPU")
    print(f"  ratio to the {GOAL_MS:.0f} ms goal: {med / GOAL_MS:.2f} ({'met' if med <= GOAL_MS else 'NOT met'})")
    if ref is not None:
        same = abs(ref.total_ms - cut.total_ms) <= 1e-9 * max(1.0, ref.total_ms)
        print(f"  cross-check, networkx preflow_push on the same network: {ref_ms:.0f} ms, "
              f"optimum {'identical' if same else 'DIFFERENT'} ({ref.total_ms:.6f} ms)")
        if not same:
            raise SystemExit(1)
    return med


def _network_size(graph: CostGraph, net: Network) -> str:
    from edgeprobe.split.maxflow import flow_network
    from edgeprobe.split.model import Costs, Index

    ix = Index(graph)
    nv, _, _, caps, _ = flow_network(ix, Costs(ix, net, "latency"))
    return f"{nv} vertices ({nv - 2 - ix.n} auxiliary), {len(caps)} arcs"


if __name__ == "__main__":
    main(sys.argv[1:])
