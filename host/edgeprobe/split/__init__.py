"""Split computing: where to cut a model between the device and a server, from measurements.

``plan_split`` measures the device's per-operator costs (ETDump, see ``costs``), the server's
per-operator costs (timed on the server's torch), the exact wire bytes of every tensor in the
chosen encoding (``edgeprobe_runner.codec``) and the per-message framing overhead (measured against
the server when one is given), builds the DADS cost graph and solves it exactly as a minimum s-t
cut (``planner``). Every cost in the plan is a *prediction* unless it says measured. With
``verify=True`` each candidate split is run end to end (head on the device runner, activations
over the network, tail on ``edgeprobe serve``, outputs back), and the plan reports the measured
e2e latency, the regret of the chosen cut (chosen / best measured) and each candidate's
prediction error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from edgeprobe.errors import TransportError, UsageError

PLAN_SCHEMA_VERSION = 3  # 3: confirm_source, declared/measured link, network_source, colocation, split_runner;
# per_message_overhead_bytes/request_overhead_ms null when not measured (no server). 2: measured_head_ms/
# confirmed_total_ms/confirm_error, packet_overhead_bytes, framing per message
Progress = Callable[[str], None]

_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmg]?)(bit|bps|b)?(?:/s)?\s*$", re.I)
_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$", re.I)


def parse_rate_bps(text: str) -> float:
    """``5.85mbit`` / ``20Mbps`` / ``800kbit`` / ``1e6`` -> bits per second (tc's units: k = 1000)."""
    m = _RATE.match(str(text))
    if not m:
        raise UsageError(f"bandwidth {text!r}: use e.g. 5.85mbit, 800kbit or 1gbit")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    if value <= 0:
        raise UsageError(f"bandwidth {text!r} must be positive")
    return value


def parse_time_ms(text: str) -> float:
    m = _TIME.match(str(text))
    if not m:
        raise UsageError(f"time {text!r}: use e.g. 40ms, 0.04s or 500us")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, None: 1.0}[(m.group(2) or "ms").lower()]


@dataclass(frozen=True)
class CandidateRow:
    label: str  # device-only | cloud-only | after NODE (the last device node in graph order)
    kind: str
    device_nodes: int
    crossing: tuple[str, ...]
    bytes_up: int
    predicted_device_ms: float
    predicted_uplink_ms: float
    predicted_server_ms: float
    predicted_downlink_ms: float
    predicted_rtt_ms: float
    predicted_total_ms: float
    measured_e2e_p50_ms: Optional[float] = None  # verify: end to end, head on the device
    measured_e2e_p90_ms: Optional[float] = None
    prediction_error: Optional[float] = None  # (predicted - measured) / measured
    sqnr_db: Optional[float] = None  # final outputs vs the unsplit model (verify)
    error: Optional[str] = None
    device_node_names: tuple[str, ...] = ()
    predicted_overhead_ms: float = 0.0  # per-request software time (measured), part of predicted_total_ms
    measured_head_ms: Optional[float] = None  # confirm: the compiled (XNNPACK) head's p50 on the device
    confirmed_total_ms: Optional[float] = None  # predicted total with the measured head in place of its prediction
    confirm_error: Optional[str] = None  # why the head could not be timed (the row keeps its prediction)
    confirm_source: Optional[str] = None  # where measured_head_ms comes from, or why there is none (cloud-only)


@dataclass(frozen=True)
class SplitPlan:
    model_ref: str
    device: str
    server: Optional[str]
    uplink_bps: float
    downlink_bps: float
    rtt_ms: float
    encoding: str
    objective: str
    per_message_overhead_bytes: Optional[int]  # measured against the server; None without one (not in the model)
    packet_overhead_bytes: int
    request_overhead_ms: Optional[float]  # measured (echo through the server); None without one
    chosen: CandidateRow
    device_only: CandidateRow
    cloud_only: CandidateRow
    candidates: tuple[CandidateRow, ...]
    policy: tuple[tuple[float, str], ...]  # (uplink bps from which the decision holds, label)
    cost_sources: dict[str, str]
    created_utc: str
    regret: Optional[float] = None  # verify: chosen measured / best measured
    best_measured: Optional[str] = None
    median_abs_prediction_error: Optional[float] = None
    notes: tuple[str, ...] = ()
    # the link as the user declared it (--uplink/--downlink/--rtt) and as probed over the device's path to
    # the server (None without a server); network_source says which of the two the plan used
    declared_link: Optional[dict[str, float]] = None
    measured_link: Optional[dict[str, Any]] = None
    network_source: str = "declared"
    colocation: Optional[dict[str, Any]] = None  # whether device half and server share this host's CPUs, and the pinning
    split_runner: Optional[str] = None  # what ran the device half in verify (native | python)
    schema_version: int = PLAN_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _label(og, cut) -> str:
    if cut.kind != "split":
        return cut.kind
    order = [n.name for n in og.nodes if n.name in cut.device_nodes]
    return f"after {order[-1]}"


def _row(og, cut, bytes_of: dict[str, int]) -> CandidateRow:
    b = cut.breakdown
    return CandidateRow(_label(og, cut), cut.kind, len(cut.device_nodes), tuple(cut.crossing),
                        sum(bytes_of.get(t, 0) for t in cut.crossing), b.device_ms, b.uplink_ms, b.server_ms,
                        b.downlink_ms, b.rtt_ms, b.total_ms, device_node_names=tuple(sorted(cut.device_nodes)),
                        predicted_overhead_ms=b.overhead_ms)


def _server_address(server: Optional[str]) -> Optional[tuple[str, int]]:
    if server is None or server == "local":
        return None
    addr = server[4:] if server.startswith("tcp:") else server
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--server {server!r}: use tcp:HOST:PORT of `edgeprobe serve`")
    return host, int(port)


def plan_split(
    model: Any,
    *,
    device: str = "local",
    server: Optional[str] = None,
    device_server: Optional[str] = None,
    token: Optional[str] = None,
    device_token: Optional[str] = None,
    uplink: str | float = "5.85mbit",
    downlink: str | float = "20mbit",
    rtt: str | float = "40ms",
    encoding: str = "fp32",
    objective: str = "latency",
    memory_limit_bytes: Optional[int] = None,
    input_shape: Optional[Sequence[int]] = None,
    weights: Optional[str] = None,
    iterations: int = 10,
    warmup: int = 2,
    verify: bool = False,
    verify_candidates: Optional[int] = None,
    confirm: int = 3,
    packet_overhead_bytes: int = 52,
    device_costs: Any = None,
    split_runner: str = "auto",
    policy_bps: Optional[Sequence[float]] = None,
    network: str = "declared",
    progress: Optional[Progress] = None,
) -> SplitPlan:
    """Plan (and with ``verify`` run end to end) the split of ``model`` between ``device`` and
    ``server`` (``tcp:HOST:PORT`` of ``edgeprobe serve``; ``None``/``local``: server costs timed on
    this machine, and no verification).

    ``device_server``: the server as the device reaches it, when that differs from ``server`` (the
    host's way in, which loads the tail programs: tens of MB that a deployment puts on the server
    ahead of time rather than over the device's link). Default: ``server``.

    ``confirm``: lower the heads of the ``confirm`` best-predicted splits (and the chosen one) for the
    device, time them there, and choose among them with the measured head in place of its predicted
    time (0: choose from predictions only). ``packet_overhead_bytes``: TCP/IP header bytes per 1448-byte
    segment that the link rates also carry (52 for TCP/IPv4 with timestamps; 0 if the rates are goodput).
    ``split_runner``: what runs the device half in ``verify``: "native" (the C++ runner's split mode, on
    any device: local, adb:, tcp:) or "python" (``edgeprobe_runner.split_client``, ``local`` only);
    "auto": the runner the device costs were measured with (the native runner), so that the verified
    times and the predictions come from the same runtime path.

    ``network``: "declared" plans with ``uplink``/``downlink``/``rtt``; "measured" with the link probed
    over the device's path to the server (``split.link``). The probe runs whenever there is a server, and
    the plan carries both (``declared_link``, ``measured_link``) with a WARNING note when they differ.

    A server on this host (same kernel boot id, or a loopback address) and a ``local`` device share the
    CPUs: the two sides' thread pools then compete and the measured times stop matching the costs
    measured apart. When the server keeps to some cores (``edgeprobe serve --cpus``) the device half is
    pinned to the others, with as many runtime threads (``colocation`` in the plan); else a WARNING.

    ``device_costs``: ``costs.measure_device_costs(graph.op_graph(...).exported, ...)`` of the same model
    on the same device, reused instead of measured again (planning one model for several networks)."""
    from edgeprobe.models import load_model
    from edgeprobe.split import link, planner
    from edgeprobe.split.costs import measure_device_costs, time_nodes
    from edgeprobe.split.graph import op_graph, to_cost_graph
    from edgeprobe_runner import codec

    say = progress or (lambda _m: None)
    if encoding not in ("fp32", "fp16", "int8"):
        raise UsageError(f"--encoding {encoding!r}: use fp32, fp16 or int8")
    if split_runner not in ("auto", "python", "native"):
        raise UsageError(f"split runner {split_runner!r}: use native or python")
    if split_runner == "python" and device != "local":
        raise UsageError("the Python split client runs on this host only (device local); use the native runner")
    if confirm < 0 or packet_overhead_bytes < 0:
        raise UsageError("--confirm and --packet-overhead must be >= 0")
    if objective not in ("latency", "energy"):
        raise UsageError(f"--objective {objective!r}: use latency or energy")
    if network not in ("declared", "measured"):
        raise UsageError(f"--network {network!r}: use declared (--uplink/--downlink/--rtt) or measured")
    if objective == "energy":  # the planner can (edgeprobe.split.planner); the meters cannot price operators
        raise UsageError("the energy objective needs a per-operator device energy meter; edgeprobe measures "
                         "whole-run energy only (battery/ODPM/RAPL), so it cannot price operators. Use latency.")
    up = parse_rate_bps(uplink) if isinstance(uplink, str) else float(uplink)
    down = parse_rate_bps(downlink) if isinstance(downlink, str) else float(downlink)
    rtt_ms = parse_time_ms(rtt) if isinstance(rtt, str) else float(rtt)
    addr = _server_address(server)
    dev_addr = _server_address(device_server) if device_server else addr
    if device_server and addr is None:
        raise UsageError("--device-server is the device's way to --server; give --server too")
    if verify and addr is None:
        raise UsageError("--verify runs the split end to end and needs --server tcp:HOST:PORT (edgeprobe serve)")
    if network == "measured" and addr is None:
        raise UsageError("--network measured probes the link to the server: give --server tcp:HOST:PORT")
    token = token or os.environ.get("EDGEPROBE_SERVE_TOKEN")  # edgeprobe serve's; never the runner's
    device_token = device_token or os.environ.get("EDGEPROBE_TOKEN")  # a tcp: runner's (not the server's)
    if device_costs is None:  # a bad device id or an unreachable device fails before any lowering
        from edgeprobe.devices import check_device

        check_device(device, runner="native", token=device_token)
    spec = load_model(model, input_shape=input_shape, weights=weights)
    say(f"exporting {spec.ref} and building its operator graph")
    og = op_graph(spec.module if spec.module is not None else spec.exported, spec.example_inputs)
    names = {n.name for n in og.nodes}
    if device_costs is not None:
        if device_costs.device != device or not set(device_costs.per_node_ms) <= names:
            raise UsageError(f"device_costs were measured on {device_costs.device} for another graph; "
                             f"they cannot price {spec.ref} on {device}")
    notes: list[str] = []
    client = None
    info: dict[str, Any] = {}
    overhead: Optional[int] = None
    request_ms: Optional[float] = None
    # One program name per plan, reused for every program it loads (the whole model, the echo, each
    # tail), and unloaded at the end: two plans sharing a server never replace each other's programs.
    prog = f"edgeprobe-split-{os.getpid()}-{secrets.token_hex(4)}"
    if addr is not None:
        from edgeprobe.split.server import TailClient

        if not token:
            raise UsageError("--server needs its token: --token or $EDGEPROBE_SERVE_TOKEN (`edgeprobe serve` prints it)")
        client = TailClient(addr[0], addr[1], token)
        info = dict(client.info or {})
    coloc = _colocation(device, info if client is not None else None, dev_addr)
    pin = coloc.get("device_cpus") if coloc and coloc.get("pinned") else None
    threads = len(pin) if pin else 0  # 0: the runner's default
    if coloc and coloc.get("warning"):
        say(coloc["warning"])
        notes.append(coloc["warning"])
    elif pin:
        say(f"the server runs on this host's cores {coloc['server_cpus']}: the device half is pinned to {pin} "
            f"with {threads} thread(s)")
    declared = {"uplink_bps": up, "downlink_bps": down, "rtt_ms": rtt_ms}
    measured_link: Optional[dict[str, Any]] = None
    try:
        with _pinned(pin):
            if device_costs is not None:
                dev = device_costs
                if pin and getattr(dev, "threads", 0) != threads:
                    notes.append(f"the device costs given were measured with {getattr(dev, 'threads', 0) or 'default'} "
                                 f"threads, not pinned to {pin} like the rest of this plan")
            else:
                say(f"{len(og.nodes)} operator nodes; measuring per-operator device costs on {device} (ETDump)")
                dev = measure_device_costs(og.exported, device=device, iterations=iterations, warmup=warmup,
                                           token=device_token, node_names=names, threads=threads, progress=say)
            notes += list(dev.notes)
            runner_of_costs = getattr(dev, "runner", "native")
            if split_runner == "auto":  # the runtime path the device costs were measured with
                split_runner = "python" if runner_of_costs == "python" and device == "local" else "native"
            elif split_runner != runner_of_costs:
                notes.append(f"WARNING: the device costs come from the {runner_of_costs} runner and --verify runs the "
                             f"{split_runner} one: the measured times include the difference between the two "
                             "runtime paths (--split-runner auto uses the same one)")
            if pin and split_runner == "python":
                notes.append("the Python split client sizes its own thread pool (not to the pinned cores)")
            if client is not None:
                say(f"measuring per-operator server costs on {server}")
                server_ms, sinfo = client.profile(prog, og.exported, list(spec.example_inputs), runs=iterations)
                # Timing node by node synchronizes after each one: on CUDA that serializes the kernel launches the
                # whole program overlaps (the per-node sum was 1.7-1.8x the whole-model time for ResNet18 and
                # MobileNetV2 on an H200, 0.97-1.03x on CPU). Scaled to the whole-model time, as the device side is.
                node_sum = sum(server_ms.values())
                whole = sinfo.get("whole_ms")
                if isinstance(whole, (int, float)) and whole > 0 and node_sum > 0:
                    s_scale = float(whole) / node_sum
                    server_ms = {k: v * s_scale for k, v in server_ms.items()}
                    server_src = (f"per-node times on the server ({sinfo.get('device', '?')}), fx interpreter, median "
                                  f"of {iterations}, scaled x{s_scale:.3f} to its whole-model time {whole:.3f} ms")
                else:
                    server_src = (f"per-node times on the server ({sinfo.get('device', '?')}), fx interpreter, median "
                                  f"of {iterations}, not scaled: the server reported no whole-model time")
                client.run(prog, list(spec.example_inputs), encoding)
                overhead = int(client.last["bytes_up"] - client.last["payload_up"])  # length prefix + JSON header
                request_ms = _request_overhead_ms(client, prog, iterations, warmup)
                measured_link = _measure_link(client, addr, dev_addr, token, prog, packet_overhead_bytes, device, say)
                diff = [] if "error" in measured_link else link.compare(declared, measured_link)
                if network == "measured":
                    if "error" in measured_link or measured_link.get("uplink_bps") is None \
                            or measured_link.get("downlink_bps") is None:
                        raise UsageError("--network measured: the link probe could not measure "
                                         + (measured_link.get("error") or "; ".join(measured_link["unresolved"]))
                                         + "; declare the link with --uplink/--downlink/--rtt")
                    up, down = measured_link["uplink_bps"], measured_link["downlink_bps"]
                    rtt_ms = measured_link["rtt_ms"]
                    notes.append(f"planned with the measured link to {measured_link['path']}: up {up / 1e6:.4g} Mbit/s, "
                                 f"down {down / 1e6:.4g} Mbit/s, RTT {rtt_ms:.3g} ms"
                                 + (f" (the declared one differs: {'; '.join(diff)})" if diff else ""))
                elif diff:
                    warn = (f"WARNING: the link measured to {measured_link['path']} is not the declared one: "
                            f"{'; '.join(diff)}. The predictions are for the declared link, so a --verify over this one "
                            "measures another network (prediction errors and regret say nothing about the plan): "
                            "declare the real link, or plan with it (--network measured)")
                    say(warn)
                    notes.append(warn)
                elif "error" in measured_link:
                    notes.append(f"the link could not be probed: {measured_link['error']}")
            else:
                say("timing per-operator server costs on this machine (CPU; no --server given)")
                server_ms = time_nodes(og.exported.module(), spec.example_inputs, runs=iterations, warmup=warmup)
                server_src = f"per-node times on this host's CPU (fx interpreter, median of {iterations}); no server given"
                notes.append("no server: the framing and the software time per request were not measured and are "
                             "not in the predictions (per_message_overhead_bytes and request_overhead_ms are null)")
            _codec = codec

            tensor_bytes: dict[str, int] = {i.name: _codec.encoded_bytes([(i.info.shape, i.info.dtype)], encoding)
                                            for i in og.inputs}
            for n in og.nodes:
                if len(n.outputs) == 1:
                    tensor_bytes[n.name] = _codec.encoded_bytes([(n.outputs[0].shape, n.outputs[0].dtype)], encoding)
                elif n.is_getitem:
                    prod = og.node(n.getitem_of[0])
                    info_ = prod.outputs[n.getitem_of[1]]
                    tensor_bytes[n.name] = _codec.encoded_bytes([(info_.shape, info_.dtype)], encoding)
            graph = to_cost_graph(og, dev.per_node_ms, server_ms, tensor_bytes=tensor_bytes)
            net = planner.Network(up, down, rtt_ms, overhead or 0, packet_overhead_bytes=packet_overhead_bytes,
                                  request_overhead_ms=request_ms or 0.0)
            say("solving the minimum cut")
            chosen = planner.plan(graph, net, objective, memory_limit_bytes)
            cands = planner.candidates(graph, net)
            rows = [_row(og, c, tensor_bytes) for c in cands]
            chosen_row = _row(og, chosen, tensor_bytes)
            bps = list(policy_bps) if policy_bps else [up * f for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20,
                                                                        50, 100)]
            pol = tuple((bw, _label(og, c)) for bw, c in planner.policy(graph, sorted(bps), down, rtt_ms,
                                                                        per_message_overhead_bytes=overhead or 0,
                                                                        memory_limit_bytes=memory_limit_bytes,
                                                                        packet_overhead_bytes=packet_overhead_bytes,
                                                                        request_overhead_ms=request_ms or 0.0))
            if confirm:
                rows, chosen_row, note = _confirm(og, spec, rows, chosen_row, dev.xnnpack_total_ms, confirm, device,
                                                  device_token, iterations, warmup, memory_limit_bytes is None, say,
                                                  threads=threads)
                notes += [note] if note else []
            regret = best = med_err = None
            if verify and client is not None:
                rows = _verify(og, spec, rows, client, dev_addr, token, encoding, iterations, warmup, verify_candidates,
                               prog, say, device=device, split_runner=split_runner, device_token=device_token,
                               threads=threads)
    except BaseException:
        if client is not None:
            client.close()
        raise
    if verify and client is not None:
        measured = [r for r in rows if r.measured_e2e_p50_ms is not None]
        if measured:
            best_row = min(measured, key=lambda r: r.measured_e2e_p50_ms)
            mine = next((r for r in rows if r.device_node_names == chosen_row.device_node_names), None)
            best = best_row.label
            if mine is not None and mine.measured_e2e_p50_ms is not None:
                chosen_row = mine
                regret = mine.measured_e2e_p50_ms / best_row.measured_e2e_p50_ms
            errs = [abs(r.prediction_error) for r in measured if r.prediction_error is not None]
            med_err = statistics.median(errs) if errs else None
    if client is not None:
        try:
            client.unload(prog)
        except Exception:  # noqa: BLE001 - best effort: the plan is complete either way
            pass
        client.close()
    sources = {"device": dev.method, "server": server_src,
               "network": (f"exact encoded bytes ({encoding}, edgeprobe_runner.codec) + {packet_overhead_bytes} B "
                           "TCP/IP headers per 1448 B + " + (f"{overhead} B framing per message (measured)"
                                                             if overhead is not None
                                                             else "framing not measured (no server)")) +
                          (f"; {request_ms:.3f} ms software time per request (server handling + client encode/"
                           "decode of a 1-element echo, measured)" if request_ms is not None else "") +
                          ("; link: measured by the probe" if network == "measured" else
                           "; link: declared (--uplink/--downlink/--rtt)"),
               "scale": f"portable total {dev.portable_total_ms:.3f} ms -> XNNPACK p50 {dev.xnnpack_total_ms:.3f} ms"}
    return SplitPlan(spec.ref, device, server, up, down, rtt_ms, encoding, objective, overhead,
                     packet_overhead_bytes, request_ms, chosen_row,
                     next(r for r in rows if r.kind == "device-only"), next(r for r in rows if r.kind == "cloud-only"),
                     tuple(rows), pol, sources,
                     _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), regret, best, med_err,
                     tuple(notes), declared_link=declared, measured_link=measured_link, network_source=network,
                     colocation=coloc, split_runner=split_runner if verify else None)


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


def _colocation(device: str, info: Optional[dict[str, Any]], addr: Optional[tuple[str, int]]
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
def _pinned(cpus: Optional[Sequence[int]]):
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


def _measure_link(client, addr, dev_addr, token: str, prog: str, packet_overhead_bytes: int, device: str,
                  say: Progress) -> dict[str, Any]:
    """The link probe (``split.link``) over the device's way to the server (``dev_addr``): the plan's
    own connection when that is the same address, else a second one. From this host: for a device on
    another machine it is this host's path, which the record says."""
    from edgeprobe.split import link
    from edgeprobe.split.server import TailClient

    say(f"probing the link to {dev_addr[0]}:{dev_addr[1]} (RTT, throughput both ways)")
    other = None
    try:
        c = client
        if tuple(dev_addr) != tuple(addr):
            other = c = TailClient(dev_addr[0], dev_addr[1], token)
        out = link.probe_link(c, prog, packet_overhead_bytes=packet_overhead_bytes)
    except Exception as exc:  # noqa: BLE001 - the plan goes on with the declared link, and says why
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {"path": f"{dev_addr[0]}:{dev_addr[1]}", "error": f"{type(exc).__name__}: {msg}"}
    finally:
        if other is not None:
            other.close()
    out["from"] = "this host" + ("" if device == "local" else f" (not {device}: its own path may differ)")
    return out


def _confirm(og, spec, rows: list[CandidateRow], chosen: CandidateRow, device_only_ms: float, k: int, device: str,
             token: Optional[str], iterations: int, warmup: int, may_switch: bool, say: Progress, *, threads: int = 0
             ) -> tuple[list[CandidateRow], CandidateRow, Optional[str]]:
    """Time the compiled heads of the ``k`` best-predicted splits (and the chosen one) on the device.

    The per-operator device costs are predictions (portable-kernel ETDump times scaled to the XNNPACK
    whole-model p50); this measures each of these heads as lowered (XNNPACK) and run by the runner on
    the device. The device-only row's head is the whole model: the per-node costs were scaled to one
    bench of it (``device_only_ms``), so its prediction equals that bench by construction; it is timed
    again here, in a bench of its own, so that its confirmed total is a second measurement and not the
    first one restated. Cloud-only has no head: nothing to measure (``measured_head_ms`` None, its
    confirmed total is its prediction). Among the confirmed rows the best ``confirmed_total_ms`` is
    chosen (``may_switch``: not under a memory limit, whose choice the confirmation does not re-check)."""
    from edgeprobe import api
    from edgeprobe.lower import lower
    from edgeprobe.models import ModelSpec
    from edgeprobe.split.graph import export_head, split

    splits = [r for r in rows if r.kind == "split"]
    picked = {r.device_node_names for r in splits[:k]} | ({chosen.device_node_names} if chosen.kind == "split" else set())
    out: list[CandidateRow] = []
    n_runs = max(iterations, 10)
    for r in rows:
        measured: Optional[float] = None
        if r.kind == "cloud-only":
            out.append(dataclasses.replace(r, confirmed_total_ms=r.predicted_total_ms, confirm_source=(
                "no head: nothing runs on the device, so there is nothing to time; the confirmed total is the "
                "prediction")))
            continue
        if r.kind == "device-only" or r.device_node_names in picked:
            say(f"confirming {r.label}: lowering its head and timing it on {device}")
            try:
                s = split(og, spec.example_inputs, set(r.device_node_names))
                art = lower(ModelSpec(f"{spec.ref}-head", s.head_example_inputs, exported=export_head(s)))
                res = api.bench(art, device=device, token=token, iterations=n_runs, warmup=warmup, threads=threads)
                if not res.ok or res.stats is None:
                    raise RuntimeError(res.run.error.message if res.run.error else "no timing")
                measured = res.stats.p50_ms
            except Exception as exc:  # noqa: BLE001 - the row keeps its prediction and says why
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                out.append(dataclasses.replace(r, confirm_error=f"{type(exc).__name__}: {msg}"))
                continue
        if measured is None:
            out.append(r)
        else:
            src = f"p50 of {n_runs} runs of the head, lowered (XNNPACK) as a program of its own, on {device}"
            if r.kind == "device-only":
                src = (f"p50 of {n_runs} runs of the whole model (the device-only head) in a bench of its own on "
                       f"{device}; the per-node costs were scaled to another bench of it ({device_only_ms:.3f} ms), "
                       "which is therefore its prediction by construction")
            out.append(dataclasses.replace(r, measured_head_ms=measured, confirm_source=src, confirmed_total_ms=(
                r.predicted_total_ms - r.predicted_device_ms + measured)))
    by_nodes = {r.device_node_names: r for r in out}
    new_chosen = by_nodes.get(chosen.device_node_names, chosen)
    note = None
    confirmed = [r for r in out if r.confirmed_total_ms is not None]
    if may_switch and confirmed and new_chosen.confirmed_total_ms is not None:
        best = min(confirmed, key=lambda r: r.confirmed_total_ms)
        if best.confirmed_total_ms < new_chosen.confirmed_total_ms:
            note = (f"confirmation changed the choice: {new_chosen.label} {new_chosen.confirmed_total_ms:.3f} ms -> "
                    f"{best.label} {best.confirmed_total_ms:.3f} ms with the measured heads")
            new_chosen = best
    return out, new_chosen, note


class _ClientProcess:
    """One ``edgeprobe_runner.split_client --jobs`` process for a whole sweep (it imports the runtime
    once instead of once per candidate); restarted after a crash or a timeout."""

    def __init__(self, tmp: Path, env: Optional[dict[str, str]] = None) -> None:
        self._err_path = tmp / "split_client.stderr"
        self._env = env  # the server's token goes in $EDGEPROBE_SPLIT_TOKEN, never on the argv
        self._proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "_ClientProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(timeout=10)
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()
            self._proc = None

    def stderr_tail(self) -> str:
        try:
            lines = self._err_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return " | ".join(lines[-3:]) or "no output"

    def run(self, argv: list[str], timeout_s: float) -> None:
        import selectors

        if self._proc is None or self._proc.poll() is not None:
            self._stop()
            with open(self._err_path, "ab") as err:
                self._proc = subprocess.Popen([sys.executable, "-m", "edgeprobe_runner.split_client", "--jobs"],
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                              env=self._env)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(json.dumps(argv) + "\n")
            self._proc.stdin.flush()
        except OSError:
            self._stop()
            return
        sel = selectors.DefaultSelector()
        sel.register(self._proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout_s)
        sel.close()
        if not ready or not self._proc.stdout.readline():  # hung, or exited: the next job gets a fresh one
            self._stop()


def _request_overhead_ms(client, prog: str, iterations: int, warmup: int) -> float:
    """The software time of one request/reply, whatever the network: a 1-element echo program run
    through the server; per run, the server's handling (``handle_ms``) plus this client's encode and
    decode; the median. The socket time (the network's part) is left out on purpose."""
    import torch

    class _Echo(torch.nn.Module):
        def forward(self, x):
            return x + 0

    x = torch.zeros(1)
    client.load(prog, torch.export.export(_Echo(), (x,)))
    samples = []
    for i in range(warmup + max(iterations, 10)):
        client.run(prog, [x])
        if i >= warmup:
            last = client.last
            if last["handle_ms"] is None:
                raise TransportError("the split server does not report handle_ms, so the software time per "
                                     "request cannot be measured; update edgeprobe on the server")
            samples.append(last["handle_ms"] + last["client_encode_ms"] + last["client_decode_ms"])
    return statistics.median(samples)


class _NativeSplit:
    """The native runner's split mode (device_runner/PROTOCOL.md) on ``device``, over its transport:
    the runner measures the artifact as usual (load, output check), then times head -> network ->
    tail; the split's times and its outputs come back in three files next to the artifact."""

    def __init__(self, device: str, token: Optional[str], threads: int = 0) -> None:
        from edgeprobe.devices import open_device

        self.dev = open_device(device, runner="native", token=token)
        self.threads = threads

    def run(self, art, extra: list[str], iterations: int, warmup: int, tmp: Path, k: int,
            token: Optional[str] = None) -> tuple[dict[str, Any], bytes, Optional[bytes]]:
        from edgeprobe.devices import MeasureConfig, measure

        t = self.dev.transport
        remote = f"{t.workdir}/{art.manifest.cache_key}/split-outputs.bin"
        with self._token_file(token, f"{t.workdir}/{art.manifest.cache_key}", tmp) as token_args:
            res = measure(self.dev, art, MeasureConfig(warmup=warmup, iterations=iterations, timeout_s=600.0,
                                                       threads=self.threads),
                          extra_args=[*extra, *token_args, "--split-outputs", remote])
        if not res.ok:
            err = res.run.error
            raise RuntimeError(f"{err.code}: {err.message}" if err else "the runner failed")
        files: dict[str, Optional[bytes]] = {}
        for suffix in (".json", "", ".tail"):
            local = tmp / f"native{k}{suffix or '.bin'}"
            try:
                t.pull(remote + suffix, local)
                files[suffix] = local.read_bytes()
            except Exception:  # noqa: BLE001 - device-only runs write no .tail
                files[suffix] = None
        if files[".json"] is None or files[""] is None:
            raise RuntimeError(f"the runner wrote no split record at {remote}.json")
        return json.loads(files[".json"]), files[""] or b"", files[".tail"]

    @contextlib.contextmanager
    def _token_file(self, token: Optional[str], remote_dir: str, tmp: Path):
        """The server's token for the runner, never on its argv: a 0600 file pushed with the run's
        files (``--split-token-file``) and deleted from the device and here after the run."""
        if not token:
            yield []
            return
        t = self.dev.transport
        local = tmp / f"split-token-{secrets.token_hex(8)}"
        remote = f"{remote_dir}/{local.name}"
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        try:
            t.push(local, remote)
            if getattr(t, "shell", None) is not None:
                t.shell(f"chmod 600 '{remote}'")
            yield ["--split-token-file", remote]
        finally:
            local.unlink(missing_ok=True)
            try:
                if getattr(t, "remove", None) is not None:
                    t.remove(remote)
                elif getattr(t, "shell", None) is not None:
                    t.shell(f"rm -f '{remote}'")
            except Exception:  # noqa: BLE001 - the run's result matters more; the name is random
                pass

    def close(self) -> None:
        self.dev.close()


def _verify(og, spec, rows: list[CandidateRow], client, addr, token: str, encoding: str, iterations: int,
            warmup: int, limit: Optional[int], tail_name: str, say: Progress, *, device: str = "local",
            split_runner: str = "python", device_token: Optional[str] = None, threads: int = 0) -> list[CandidateRow]:
    """Run each candidate end to end: head lowered to .pte (XNNPACK) and run on the device (the native
    runner's split mode, or the Python split client on this host), tail on the server."""
    import torch

    from edgeprobe.lower import lower
    from edgeprobe.models import ModelSpec, flatten_outputs
    from edgeprobe.split.graph import export_head, export_tail, split
    from edgeprobe_runner import codec

    with torch.no_grad():
        want = torch.cat([t.reshape(-1).float() for t in flatten_outputs(spec.module(*spec.example_inputs)
                                                                         if spec.module is not None else
                                                                         spec.exported.module()(*spec.example_inputs))])
    todo = rows if limit is None else rows[:limit]
    # The plan's one program name, reloaded per candidate (the same name replaces the last tail): a name
    # per candidate would hit the server's --max-programs (64) on models with more candidates.
    out: list[CandidateRow] = []
    native = _NativeSplit(device, device_token, threads) if split_runner == "native" else None
    client_env = {**os.environ, "EDGEPROBE_SPLIT_TOKEN": token or ""}
    with tempfile.TemporaryDirectory(prefix="edgeprobe-split-") as tmp, _ClientProcess(Path(tmp), client_env) as proc, \
            contextlib.closing(native) if native is not None else contextlib.nullcontext():
        inputs = Path(tmp) / "inputs.bin"
        inputs.write_bytes(codec.encode(list(spec.example_inputs), "fp32"))
        for k, r in enumerate(todo):
            say(f"verify [{k + 1}/{len(todo)}] {r.label}" + (f" (native runner on {device})" if native else ""))
            try:
                s = split(og, spec.example_inputs, set(r.device_node_names))
                if native is not None:
                    rec, head_b, tail_b = _native_candidate(native, s, spec, client, addr, token, encoding, tail_name,
                                                            iterations, warmup, Path(tmp), k)
                    head_outs = [] if s.cloud_only else codec.decode(head_b)
                    got = s.assemble(head_outs, codec.decode(tail_b) if tail_b else [])
                    out.append(_measured_row(r, rec, want, got))
                    continue
                argv = ["--inputs", str(inputs),
                        "--iterations", str(iterations), "--warmup", str(warmup), "--encoding", encoding,
                        "--out", str(Path(tmp) / f"r{k}.json"), "--outputs-file", str(Path(tmp) / f"o{k}.bin")]
                if not s.cloud_only:
                    art = lower(ModelSpec(f"{spec.ref}-head", s.head_example_inputs, exported=export_head(s)))
                    argv += ["--head", str(art.model_path), "--send", str(len(s.crossing))]
                if s.device_only:
                    argv += ["--server", "none"]
                else:
                    client.load(tail_name, export_tail(s))
                    argv += ["--server", f"{addr[0]}:{addr[1]}", "--name", tail_name]
                rec_path = Path(tmp) / f"r{k}.json"
                proc.run(argv, timeout_s=600)
                if not rec_path.exists():  # killed, crashed or refused its arguments: say how
                    raise RuntimeError(f"the split client wrote no result: {proc.stderr_tail()}")
                rec = json.loads(rec_path.read_text())
                if rec["status"] != "ok":
                    raise RuntimeError(rec["error"]["message"])
                outs = codec.decode((Path(tmp) / f"o{k}.bin").read_bytes())
                nh = rec.get("head_outputs_count", 0)
                out.append(_measured_row(r, rec, want, s.assemble(outs[:nh], outs[nh:])))
            except Exception as exc:  # noqa: BLE001 - a failing candidate is a row with its error
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                out.append(dataclasses.replace(r, error=f"{type(exc).__name__}: {msg}"))
    return out + rows[len(todo):]


def _measured_row(r: CandidateRow, rec: dict[str, Any], want, got) -> CandidateRow:
    import torch

    from edgeprobe.compress.fidelity import sqnr_db

    e2e = sorted(it["e2e_ms"] for it in rec["iterations"])
    got_flat = torch.cat([t.reshape(-1).float() for t in got])
    p50 = statistics.median(e2e)
    p90 = e2e[min(len(e2e) - 1, math.ceil(0.9 * len(e2e)) - 1)]
    return dataclasses.replace(r, measured_e2e_p50_ms=p50, measured_e2e_p90_ms=p90,
                               prediction_error=(r.predicted_total_ms - p50) / p50, sqnr_db=sqnr_db(want, got_flat))


def _native_candidate(native: _NativeSplit, s, spec, client, addr, token: str, encoding: str, tail_name: str,
                      iterations: int, warmup: int, tmp: Path, k: int):
    """One candidate on the native runner: its head artifact (cloud-only: the whole model's, whose
    inputs are sent without running it), the tail loaded on the server."""
    from edgeprobe.lower import lower
    from edgeprobe.models import ModelSpec
    from edgeprobe.split.graph import export_head, export_tail

    extra = ["--split-encoding", encoding, "--split-send", str(len(s.crossing))]
    if s.cloud_only:
        art = lower(spec)
        extra += ["--split-send-inputs", "1"]
    else:
        art = lower(ModelSpec(f"{spec.ref}-head", s.head_example_inputs, exported=export_head(s)))
    if s.device_only:
        extra += ["--split-server", "none"]
    else:
        client.load(tail_name, export_tail(s))
        extra += ["--split-server", f"{addr[0]}:{addr[1]}", "--split-name", tail_name]
    return native.run(art, extra, iterations, warmup, tmp, k, token=None if s.device_only else token)
