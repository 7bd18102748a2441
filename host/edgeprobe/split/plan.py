"""Orchestration: ``plan_split`` measures the costs, solves the cut, and runs the confirm and verify steps."""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import statistics
from typing import Any, Callable, Optional, Sequence

from edgeprobe.errors import UsageError
from edgeprobe.split.colocation import colocation_of, pinned
from edgeprobe.split.confirm import confirm_heads
from edgeprobe.split.device import DeviceSession
from edgeprobe.split.link import measure_link, parse_rate_bps, parse_time_ms, request_overhead_ms
from edgeprobe.split.record import CandidateRow, SplitPlan
from edgeprobe.split.verify import verify_end_to_end

Progress = Callable[[str], None]


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
    # The plan's one session on the device, for the device costs, the confirm step and the native verify
    # step (the runner deployed once); opened here when the plan measures the device costs (a bad device id
    # or an unreachable device fails before any lowering), else on first use.
    with DeviceSession(device, device_token, log=say) as device_session:
        if device_costs is None:
            device_session.get().check("pte")
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
        coloc = colocation_of(device, info if client is not None else None, dev_addr)
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
            with pinned(pin):
                if device_costs is not None:
                    dev = device_costs
                    if pin and getattr(dev, "threads", 0) != threads:
                        notes.append(f"the device costs given were measured with {getattr(dev, 'threads', 0) or 'default'} "
                                     f"threads, not pinned to {pin} like the rest of this plan")
                else:
                    say(f"{len(og.nodes)} operator nodes; measuring per-operator device costs on {device} (ETDump)")
                    dev = measure_device_costs(og.exported, device=device, iterations=iterations, warmup=warmup,
                                               token=device_token, node_names=names, threads=threads, progress=say,
                                               session=device_session.get())
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
                    request_ms = request_overhead_ms(client, prog, iterations, warmup)
                    measured_link = measure_link(client, addr, dev_addr, token, prog, packet_overhead_bytes, device, say)
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
                    rows, chosen_row, note = confirm_heads(og, spec, rows, chosen_row, dev.xnnpack_total_ms, confirm,
                                                           device, device_token, iterations, warmup,
                                                           memory_limit_bytes is None, say, threads=threads,
                                                           session=device_session)
                    notes += [note] if note else []
                regret = best = med_err = None
                if verify and client is not None:
                    rows = verify_end_to_end(og, spec, rows, client, dev_addr, token, encoding, iterations, warmup,
                                             verify_candidates, prog, say, device=device, split_runner=split_runner,
                                             device_token=device_token, threads=threads, session=device_session)
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
