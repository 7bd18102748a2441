"""Records to rich tables and text: a bench record, a sweep, a split plan, the operator and device tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from edgeprobe.results import BenchResult

console = Console()
err_console = Console(stderr=True)


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _fmt_ms(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f} ms"


def _fmt_c(x: Optional[float]) -> str:
    return "?" if x is None else f"{x:.1f} °C"


BUSY_OTHERS_CORES = 0.25  # other processes using more than this (in cores) during a run: said in yellow


def _fmt_cpu_load(load) -> str:
    """One line: what else used the CPU during the run (devices/hygiene.py), or why it is unknown."""
    if not load.available:
        return f"[dim]unknown: {escape(load.reason or '')}[/dim]"
    busiest = ", ".join(f"{p.name} {p.cores:.2f}" for p in load.others[:3] if p.cores >= 0.01)
    line = (f"other processes {load.others_cores:.2f} cores" + (f" ({busiest})" if busiest else "")
            + f" · all CPUs {load.busy_cores:.2f} of {load.cores} busy (the runner included)"
            + (f" · load avg {load.loadavg_1m_before:.2f} before" if load.loadavg_1m_before is not None else ""))
    busy = load.others_cores is not None and load.others_cores > BUSY_OTHERS_CORES
    return f"[yellow]{escape(line)}[/yellow]" if busy else escape(line)


def render_result(r: BenchResult) -> Table:
    m, run = r.manifest, r.run
    t = Table(title=f"edgeprobe · {r.model_ref} on {r.device.id}", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("artifact", f"{m.format} · {m.target}/{m.backend} · {_fmt_bytes(m.artifact_size_bytes)} · sha256 {m.artifact_sha256[:12]}")
    t.add_row("planned memory", f"{_fmt_bytes(m.planned_memory_total_bytes)} ({len(m.planned_memory_bytes)} planned buffer(s))"
              if m.planned_memory_bytes else "n/a (not reported for this format)")
    if run.runner:
        t.add_row("runner", f"{run.runner.flavor} {run.runner.version} · {run.runner.runtime} {run.runner.runtime_version}")
    if run.config:
        t.add_row("config", f"threads {run.config.threads_used} (asked {run.config.threads_requested or 'default'}) · "
                  f"warm-up {run.config.warmup} · loader {run.config.loader}")
    if not r.ok:
        assert run.error is not None
        t.add_row("[red]status[/red]", f"[red]{escape(run.error.code)}: {escape(run.error.message)}[/red]")
        if run.error.stderr_tail:
            t.add_row("stderr (tail)", escape(run.error.stderr_tail))
        return t
    v = run.verification
    if v:
        t.add_row("outputs", (f"checked against {v.testsets} bundled test set(s): max |err| {v.max_abs_error:.3g}"
                              if v.checked else f"[yellow]not checked: {v.reason}[/yellow]"))
    if run.timing:
        t.add_row("load", _fmt_ms(run.timing.load_ms))
        t.add_row("first inference", _fmt_ms(run.timing.first_inference_ms))
    s = r.stats
    if s:
        t.add_row("latency", f"p50 {_fmt_ms(s.p50_ms)} · p90 {_fmt_ms(s.p90_ms)} · p99 {_fmt_ms(s.p99_ms)} (n={s.n})")
        t.add_row("", f"trimmed mean {_fmt_ms(s.trimmed_mean_ms)} · mean {_fmt_ms(s.mean_ms)} · min {_fmt_ms(s.min_ms)}")
        t.add_row("stability", f"{s.stability_score:.1f}/100 (CV {s.cv_percent:.2f} %)")
        if s.unstable_reason:
            t.add_row("", f"[yellow]not a stable figure: {escape(s.unstable_reason)}; rerun with more "
                          f"--iterations or --min-seconds, on an idle device[/yellow]")
    if run.memory:
        mem = run.memory
        t.add_row("peak memory", f"{_fmt_bytes(mem.peak_rss_delta_bytes)} above baseline "
                  f"(peak {_fmt_bytes(mem.peak_rss_bytes)}, runner baseline {_fmt_bytes(mem.baseline_rss_bytes)}, "
                  f"swap {_fmt_bytes(mem.swap_bytes)})")
    e = run.energy
    if e:
        est = e.estimate(s.n) if s else None
        if est is not None:
            meter = est.meter or e.meter
            if est.per_inference_j is not None:
                sigma = f" ± {est.uncertainty_j * 1e3:.3f}" if est.uncertainty_j is not None else ""
                idle = f"idle {est.idle_power_w:.3f} W, " if est.idle_power_w is not None else ""
                line = (f"{est.per_inference_j * 1e3:.3f}{sigma} mJ/inference above idle "
                        f"({idle}run {est.run_power_w:.3f} W; {meter})")
            elif est.gross_per_inference_j is not None:
                line = f"gross {est.gross_per_inference_j * 1e3:.3f} mJ/inference, idle not subtracted ({meter})"
            else:
                line = None  # nothing was measured: no number, only why
            if line is None:
                t.add_row("energy", f"[yellow]unavailable: {escape(est.reason or 'no energy was measured')} "
                                    f"({escape(meter or 'no meter')})[/yellow]")
            else:
                t.add_row("energy", escape(line) if est.reliable else f"[yellow]{escape(line)} — unreliable: "
                          f"{escape(est.reason or '')}[/yellow]")
            t.add_row("", f"[dim]{escape(est.method)}; calibration: {escape(est.calibration)}[/dim]")
            measured_rails = [(name, rail) for name, rail in est.rails.items() if rail.per_inference_j is not None]
            for name, rail in sorted(measured_rails, key=lambda kv: -kv[1].per_inference_j)[:6]:
                t.add_row("", f"[dim]  {escape(name)}: {rail.per_inference_j * 1e3:.3f} mJ/inference "
                              f"(run {rail.run_power_w:.3f} W)[/dim]")
            for note in est.notes:
                t.add_row("", f"[dim]{escape(note)}[/dim]")
        elif e.available:
            t.add_row("energy", "measured, but no timing to divide it by")
        else:
            t.add_row("energy", f"unavailable: {e.reason}")
    th = run.thermal
    if th:
        t.add_row("thermal", (", ".join(f"{escape(k)} {_fmt_c(th.before_c.get(k))}→{_fmt_c(v)}" for k, v in th.after_c.items())
                              if th.available else f"unavailable: {escape(th.reason or '')}"))
    ds = r.device_state
    if ds and not ds.source.startswith("unavailable"):
        parts = []
        if ds.battery_level_percent is not None:
            parts.append(f"battery {ds.battery_level_percent} %" + (" (charging)" if ds.charging else ""))
        if ds.thermal_status is not None:
            parts.append(f"thermal status {ds.thermal_status}→{ds.thermal_status_after}")
        if ds.affinity_cores:
            parts.append(f"pinned to cores {','.join(map(str, ds.affinity_cores))}")
        if ds.fixed_performance != "off":
            parts.append(f"fixed performance {ds.fixed_performance}")
        if ds.cooldown_waited_s:
            parts.append(f"cooled down {ds.cooldown_waited_s:g} s")
        t.add_row("device state", escape(" · ".join(parts) or "no battery/thermal readings") + f" [dim]({escape(ds.source)})[/dim]")
        for note in ds.notes:
            t.add_row("", f"[yellow]{escape(note)}[/yellow]")
    if ds and ds.cpu_load is not None:
        t.add_row("other CPU use", _fmt_cpu_load(ds.cpu_load))
    if run.environment:
        env = run.environment
        t.add_row("device", f"{env.cpu_model} · {env.cores} cores · {env.os} {env.kernel} {env.machine}")
    for note in m.notes:
        t.add_row("note", note)
    return t



def _fill(t: Table, cols: Sequence[str], rows: Sequence[dict[str, str]], left: Sequence[str]) -> None:
    """Columns at least as wide as their widest cell, so a cell never wraps (a folded number is
    unreadable); a header wraps at its spaces instead."""
    from rich.text import Text

    for c in cols:  # the text columns never shrink; the numeric ones give up their header's width
        width = max([Text.from_markup(r[c]).cell_len for r in rows] + [1])
        t.add_column(c, justify="left" if c in left else "right", min_width=width, no_wrap=c in left)
    for r in rows:
        t.add_row(*[r[c] for c in cols])


def _errors_below(errors: Sequence[tuple[str, str]]) -> Optional[Table]:
    """A failed row's error printed in full under its table, not squeezed into a cell."""
    if not errors:
        return None
    e = Table(show_header=False, box=None, pad_edge=False)
    e.add_column("what", style="bold", no_wrap=True)
    e.add_column("error", style="red")
    for what, msg in errors:
        e.add_row(escape(what), escape(msg))
    return e


SWEEP_WIDE_ONLY = ("p90 ms", "peak mem", "params", "nonzero", "cosine", "top-1 agr")


def render_sweep(r, wide: bool = False) -> list:
    """The sweep table (ratios are to the fp32 row when there is one), then the failed rows' errors.
    Without ``wide``: the columns that fit 80 characters (latency, size, the Pareto front's quality
    axis); every column is in sweep.json / sweep.csv."""
    import math

    base = next((x for x in r.rows if x.recipe == "fp32" and x.status == "ok"), None)
    t = Table(title=f"sweep · {r.model_ref} on {r.device} · fidelity on {r.eval_samples} samples ({r.dataset})"
                    + (f" · fp32 eager accuracy {r.reference_accuracy:.3f}" if r.reference_accuracy is not None else ""),
              title_justify="left")
    quality = "accuracy" if r.quality == "accuracy" else "SQNR dB"
    cols = ["", "recipe", "p50 ms", "p90 ms", "× fp32", "size", "size × fp32", "peak mem", "params",
            "nonzero", "SQNR dB", "cosine", "top-1 agr", "accuracy"]
    if not wide:
        cols = [c for c in cols if c not in SWEEP_WIDE_ONLY and (c not in ("SQNR dB", "accuracy") or c == quality)]

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else ""

    def num(x, fmt):
        if x is None:
            return ""
        return "inf" if isinstance(x, float) and math.isinf(x) else format(x, fmt)

    errors, unstable, table = [], [], []
    for x in r.rows:
        if x.status != "ok":
            errors.append((x.recipe, x.error or "failed"))
            table.append({**dict.fromkeys(cols, ""), "recipe": escape(x.recipe), "p50 ms": "[red]error[/red]"})
            continue
        if getattr(x, "unstable_reason", None):
            unstable.append(f"{x.recipe}: {x.unstable_reason}")
        size = _fmt_bytes(x.artifact_size_bytes) if x.artifact_size_bytes else ""
        if x.storage_bytes_if_packed:
            size += f" ({_fmt_bytes(x.storage_bytes_if_packed)} if packed†)" if wide else "†"
        cells = {"": "[bold red]*[/bold red]" if x.pareto else "", "recipe": escape(x.recipe),
                 "p50 ms": num(x.latency_p50_ms, ".4f") + ("[yellow]![/yellow]" if getattr(x, "unstable_reason", None) else ""),
                 "p90 ms": num(x.latency_p90_ms, ".4f"), "× fp32": ratio(x.latency_p50_ms, base and base.latency_p50_ms),
                 "size": size, "size × fp32": ratio(x.artifact_size_bytes, base and base.artifact_size_bytes),
                 "peak mem": _fmt_bytes(x.peak_memory_bytes) if x.peak_memory_bytes is not None else "",
                 "params": num(x.params, ","), "nonzero": num(x.nonzero_params, ","), "SQNR dB": num(x.sqnr_db, ".1f"),
                 "cosine": num(x.cosine, ".5f"), "top-1 agr": num(x.top1_agreement, ".3f"),
                 "accuracy": num(x.accuracy, ".3f")}
        table.append(cells)
    _fill(t, cols, table, left=("", "recipe"))
    cap = ("* Pareto front over (p50 latency, artifact size, " + ("accuracy" if r.quality == "accuracy" else "SQNR")
           + "). Unstructured sparsity (magnitude, taylor) and clustering do not shrink the fp32 .pte or speed up "
             "dense kernels; their notes in sweep.json say what would. † computed from cluster indices and codebooks, "
             "not stored by the .pte.")
    if unstable:
        cap += " ! not a stable figure: " + "; ".join(unstable) + "."
    if not wide:
        cap += " More columns (p90, peak memory, parameters, fidelity): --wide, sweep.json, sweep.csv."
    t.caption = escape(cap)
    return [x for x in (t, _errors_below(errors)) if x is not None]


SPLIT_WIDE_ONLY = ("device ops", "bytes up", "downlink ms", "rtt + sw ms", "head ms (measured)", "SQNR dB")


def render_split(plan, top: int = 12, wide: bool = False) -> list:
    """The candidate table (predicted components; measured e2e with --verify), failed rows' errors,
    and the policy. Without ``wide``: the columns that fit 80 characters; all of them in --json."""
    def mbit(bps: float) -> str:
        return f"{bps / 1e6:.3g} Mbit/s"

    t = Table(title=f"split · {plan.model_ref} · device {plan.device} · server {plan.server or 'this host (timed)'} · "
                    f"up {mbit(plan.uplink_bps)}, down {mbit(plan.downlink_bps)}, RTT {plan.rtt_ms:g} ms · "
                    f"{plan.encoding}", title_justify="left")
    cols = ["cut", "device ops", "bytes up", "device ms", "uplink ms", "server ms", "downlink ms", "rtt + sw ms",
            "predicted ms"]
    verified = any(r.measured_e2e_p50_ms is not None or r.error for r in plan.candidates)
    confirmed = any(r.measured_head_ms is not None or r.confirm_error for r in plan.candidates if r.kind == "split")
    if confirmed:
        cols += ["head ms (measured)", "confirmed ms"]
    if verified:
        cols += ["measured p50 ms", "pred. error", "SQNR dB"]
    if not wide:
        cols = [c for c in cols if c not in SPLIT_WIDE_ONLY]
        if verified:  # the measurement and the prediction's error matter most; the components are in --json
            cols = [c for c in cols if c not in ("device ms", "uplink ms", "server ms")]
    rows = list(plan.candidates[:top])
    for must in (plan.chosen, plan.device_only, plan.cloud_only):
        if all(r.device_node_names != must.device_node_names for r in rows):
            rows.append(must)
    errors, table = [], []
    for r in rows:
        chosen = r.device_node_names == plan.chosen.device_node_names
        cells = {"cut": ("[bold red]*[/bold red] " if chosen else "  ") + escape(r.label), "device ops": str(r.device_nodes), "bytes up": f"{r.bytes_up:,}",
                 "device ms": f"{r.predicted_device_ms:.3f}", "uplink ms": f"{r.predicted_uplink_ms:.3f}",
                 "server ms": f"{r.predicted_server_ms:.3f}", "downlink ms": f"{r.predicted_downlink_ms:.3f}",
                 "rtt + sw ms": f"{r.predicted_rtt_ms + r.predicted_overhead_ms:.1f}",
                 "predicted ms": f"{r.predicted_total_ms:.3f}", "head ms (measured)": "", "confirmed ms": "",
                 "measured p50 ms": "", "pred. error": "", "SQNR dB": ""}
        if r.confirmed_total_ms is not None:
            cells["head ms (measured)"] = f"{r.measured_head_ms:.3f}" if r.measured_head_ms is not None else ""
            cells["confirmed ms"] = f"{r.confirmed_total_ms:.3f}"
        elif r.confirm_error:
            cells["confirmed ms"] = "[red]error[/red]"
            errors.append((f"{r.label} (confirm)", r.confirm_error))
        if r.error:
            cells["measured p50 ms"] = "[red]error[/red]"
            errors.append((f"{r.label} (verify)", r.error))
        elif r.measured_e2e_p50_ms is not None:
            cells["measured p50 ms"] = f"{r.measured_e2e_p50_ms:.3f}"
            cells["pred. error"] = f"{100 * r.prediction_error:+.1f} %" if r.prediction_error is not None else ""
            if r.sqnr_db is not None:
                cells["SQNR dB"] = "inf" if r.sqnr_db == float("inf") else f"{r.sqnr_db:.1f}"
        table.append(cells)
    _fill(t, cols, table, left=("cut",))
    cap = ["* chosen (minimum s-t cut" + (", then the best confirmed total: the predicted total with the head "
                                          "timed on the device" if confirmed else "") +
           "). Components are predictions from measured costs: " +
           "; ".join(f"{k}: {v}" for k, v in plan.cost_sources.items())]
    if plan.regret is not None:
        chosen_ms = plan.chosen.measured_e2e_p50_ms
        median = plan.median_abs_prediction_error
        cap.append(f"measured: chosen {plan.chosen.label} "
                   + (f"{chosen_ms:.3f} ms" if chosen_ms is not None else "(not measured)")
                   + f", best {plan.best_measured}; regret {plan.regret:.3f}; median |prediction error| "
                   + (f"{100 * median:.1f} %" if median is not None else "n/a"))
    if not wide:
        cap.append("more columns: --wide, or the plan in --json")
    t.caption = escape(" | ".join(cap + list(plan.notes)))
    p = Table(title="policy: uplink bandwidth -> cut (only where the decision changes; predicted)",
              title_justify="left")
    p.add_column("uplink from", justify="right", no_wrap=True)
    p.add_column("cut", no_wrap=True)
    for bw, label in plan.policy:
        p.add_row(mbit(bw), escape(label))
    return [x for x in (t, _errors_below(errors), p) if x is not None]



def render_profile(rep, top: int) -> Table:
    """The top operators of an ETDump run."""
    t = Table(title=f"top operators · {rep.result.model_ref} on {rep.result.device.id} "
                    f"(ETDump run; times include tracer overhead)", title_justify="left")
    for col in ("operator", "delegated", "calls", "mean ms", "total ms", "share"):
        t.add_column(col, justify="right" if col not in ("operator", "delegated") else "left")
    total = rep.total_ms or 1.0
    for row in rep.operators[:top]:
        t.add_row(row.name, f"yes ({row.backend})" if row.delegated else "no", str(row.count),
                  f"{row.mean_ms:.4f}", f"{row.total_ms:.3f}", f"{100 * row.total_ms / total:.1f} %")
    return t


def render_devices(rows) -> Table:
    t = Table(title="devices")
    for col in ("id", "transport", "runner", "description", "health"):
        t.add_column(col, overflow="fold")
    for d in rows:
        style = "" if d.health.startswith(("ok", "reachable")) else "red"
        t.add_row(escape(d.id), d.transport, escape(d.runner_flavor), escape(d.description),
                  f"[{style}]{escape(d.health)}[/{style}]" if style else escape(d.health))
    return t


def render_export(art) -> str:
    m = art.manifest
    return (f"{art.dir}  {m.artifact_file} {_fmt_bytes(m.artifact_size_bytes)} ({m.target}/{m.backend})"
            + ("  [dim](cached)[/dim]" if art.cached else ""))
