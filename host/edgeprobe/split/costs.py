"""Measured per-operator costs for the split planner.

Device: the model is lowered *without* delegation (portable kernels) so that ETDump records one
``OPERATOR_CALL`` event per operator; each event's debug handle maps through the ETRecord's edge
program to the ``torch.export`` node it came from (``node.meta["from_node"]``), which is the node
name the split graph uses. Portable kernels are slower than XNNPACK, so the per-operator times are
scaled to the XNNPACK whole-model latency measured in the same session: a *prediction* of each
operator's XNNPACK time (XNNPACK's own per-operator profiling is not compiled into the executorch
wheel's runtime). The planner's best candidates are then confirmed by timing their compiled
XNNPACK heads on the device.

Server: every node of the exported graph is timed on the server's torch (CPU or CUDA, with
synchronization) by an ``torch.fx.Interpreter`` that times each node, median over runs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

if TYPE_CHECKING:
    from edgeprobe.session import MeasureSession


@dataclass(frozen=True)
class DeviceCosts:
    per_node_ms: dict[str, float]  # predicted XNNPACK time per export node (portable time x scale)
    portable_ms: dict[str, float]  # measured portable-kernel time per export node (ETDump median)
    portable_total_ms: float
    xnnpack_total_ms: float  # measured whole-model p50 of the XNNPACK .pte on the device
    scale: float
    device: str
    unmapped_ms: float = 0.0  # ETDump time whose operator could not be mapped to an export node
    method: str = ("ETDump OPERATOR_CALL medians of the portable .pte mapped to export nodes via ETRecord "
                   "debug handles, scaled to the measured XNNPACK whole-model p50 (prediction per node)")
    notes: tuple[str, ...] = field(default_factory=tuple)
    runner: str = "native"  # the runner flavor that measured xnnpack_total_ms (what --split-runner auto runs)
    threads: int = 0  # runtime threads asked for (0: the runner's default)


def _provenance(sources: list) -> list[str]:
    """Every node name in a ``from_node`` chain (each pass records the node it came from)."""
    out: list[str] = []
    stack = list(sources)
    while stack:
        src = stack.pop(0)
        name = getattr(src, "name", None)
        if name and name not in out:
            out.append(name)
        stack.extend(getattr(src, "from_node", None) or [])
    return out


def etdump_node_ms(etdump: Path, etrecord: Path, node_names: Optional[set[str]] = None
                   ) -> tuple[dict[str, float], float]:
    """Median ms per export-graph node from a portable run's ETDump, and the unmapped time.
    ``node_names``: the export graph's call_function names; provenance names outside it are ignored."""
    from executorch.devtools import Inspector
    from executorch.devtools.etrecord import parse_etrecord

    et = parse_etrecord(str(etrecord))
    handle_to_nodes: dict[int, list[str]] = {}
    for node in et.edge_dialect_program.graph.nodes:
        h = node.meta.get("debug_handle")
        if node.op != "call_function" or h is None:
            continue
        names = handle_to_nodes.setdefault(int(h), [])
        for name in _provenance(node.meta.get("from_node") or []):
            if name not in names:
                names.append(name)
    inspector = Inspector(etdump_path=str(etdump), etrecord=str(etrecord))
    out: dict[str, float] = {}
    unmapped = 0.0
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.name != "OPERATOR_CALL" or event.perf_data is None or not event.perf_data.raw:
                continue
            ms = statistics.median(event.perf_data.raw)
            handles = event.debug_handles if isinstance(event.debug_handles, (list, tuple)) else [event.debug_handles]
            names = [n for h in handles if h is not None for n in handle_to_nodes.get(int(h), [])
                     if node_names is None or n in node_names]
            names = list(dict.fromkeys(names))
            if not names:
                unmapped += ms
                continue
            for n in names:  # an edge op fused from several export nodes: split its time evenly
                out[n] = out.get(n, 0.0) + ms / len(names)
    return out, unmapped


def measure_device_costs(model: Any, *, device: str = "local", iterations: int = 10, warmup: int = 2,
                         threads: int = 0, token: Optional[str] = None, node_names: Optional[set[str]] = None,
                         progress: Optional[Callable[[str], None]] = None,
                         session: Optional["MeasureSession"] = None) -> DeviceCosts:
    """Per-node device costs of ``model`` (an ``ExportedProgram``, module or model name) on ``device``:
    a portable .pte profiled with ETDump and the XNNPACK .pte's whole-model p50, both measured through
    ``session`` (an open session on ``device``: the plan's) or, when None, one opened here (the native
    runner, ``token``) before anything is lowered and closed at the end."""
    from edgeprobe.session import open_session

    if session is not None:
        return _measure_device_costs(session, model, device, iterations, warmup, threads, node_names, progress)
    with open_session(device, runner="native", token=token, log=progress) as own:
        own.check("pte")  # the runner can run a .pte: before the lowering, which can take minutes
        return _measure_device_costs(own, model, device, iterations, warmup, threads, node_names, progress)


def _measure_device_costs(session: "MeasureSession", model: Any, device: str, iterations: int, warmup: int,
                          threads: int, node_names: Optional[set[str]],
                          progress: Optional[Callable[[str], None]]) -> DeviceCosts:
    from edgeprobe.lower import capabilities, lower
    from edgeprobe.models import load_model
    from edgeprobe.profiling import profile_on
    from edgeprobe.session import MeasureConfig

    capabilities.resolve("pte", "portable")
    spec = load_model(model)
    portable_art = lower(spec, backend="portable", progress=progress)
    rep = profile_on(session, portable_art, MeasureConfig(warmup=warmup, iterations=iterations, threads=threads))
    if not rep.result.ok or rep.etdump_path is None:
        err = rep.result.run.error
        raise RuntimeError(f"profiling on {device} failed: {err.message if err else 'no ETDump'}")
    per_node, unmapped = etdump_node_ms(rep.etdump_path, portable_art.etrecord_path, node_names)
    xnn_iterations = max(iterations, 10)
    xnn_art = lower(spec, progress=progress)
    if progress:
        progress(f"measuring on {session.id} ({session.runner} runner): {warmup} warm-up + {xnn_iterations} "
                 "iterations")
    xnn = session.measure(xnn_art, MeasureConfig(warmup=warmup, iterations=xnn_iterations, threads=threads))
    if not xnn.ok or xnn.stats is None:
        raise RuntimeError(f"measuring the XNNPACK model on {device} failed: {xnn.run.error}")
    total = sum(per_node.values()) + unmapped
    scale = xnn.stats.p50_ms / total if total > 0 else 1.0
    notes = ()
    if unmapped > 0.05 * total:
        notes = (f"{unmapped:.3f} ms of {total:.3f} ms of ETDump time could not be mapped to export nodes",)
    flavor = xnn.run.runner.flavor if xnn.run.runner is not None else "native"
    return DeviceCosts({k: v * scale for k, v in per_node.items()}, per_node, total, xnn.stats.p50_ms, scale,
                       device, unmapped, notes=notes, runner=flavor, threads=threads)


class _TimingInterpreter(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, sync: Callable[[], None]) -> None:
        super().__init__(gm)
        self.times: dict[str, float] = {}
        self._sync = sync

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op != "call_function":
            return super().run_node(n)
        self._sync()
        t0 = time.perf_counter_ns()
        out = super().run_node(n)
        self._sync()
        self.times[n.name] = (time.perf_counter_ns() - t0) / 1e6
        return out


def time_nodes(gm: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...], *, device: str = "cpu",
               runs: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median ms per call_function node of ``gm`` on ``device`` (per-node interpretation adds
    Python overhead per node; compare with the whole-graph time to judge it)."""
    dev = torch.device(device)
    gm = gm.to(dev)
    inputs = tuple(x.to(dev) for x in inputs)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    samples: dict[str, list[float]] = {}
    with torch.no_grad():
        for i in range(warmup + runs):
            interp = _TimingInterpreter(gm, sync)
            interp.run(*inputs)
            if i >= warmup:
                for k, v in interp.times.items():
                    samples.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in samples.items()}
