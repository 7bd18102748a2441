"""`edgeprobe` command line: a thin layer over edgeprobe.api, with the same words for flags."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeprobe.errors import EdgeprobeError
from edgeprobe.fsutil import atomic_write_text
from edgeprobe.results import BenchResult

console = Console()
err_console = Console(stderr=True)
DEFAULT_MIN_SECONDS = 2.0  # bench and sweep: a minimum timed duration as well as a count (TFLite's min_secs)
EXIT_USAGE, EXIT_INTERNAL = 2, 3  # an EdgeprobeError (says what to do) | an unexpected exception (a bug)
_saved: list[str] = []  # files this command has written, named if it fails afterwards


def _quiet_libraries() -> None:
    """torch/executorch print deprecation chatter at import; a CLI user cannot act on it."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("torch").setLevel(logging.ERROR)


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


def _progress(msg: str) -> None:
    err_console.print(f"[dim]· {escape(msg)}[/dim]")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="torchvision name, zoo name, path/file.py:factory, file.pt2, or an artifact dir")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224")
    p.add_argument("--weights", help="state_dict file (loaded with weights_only=True)")


def _add_device_args(p: argparse.ArgumentParser, iterations: int, warmup: int) -> None:
    """The flags every measuring command shares, with the same names and meanings."""
    p.add_argument("--device", default="local", help="local | tcp:HOST:PORT | adb:HOST:PORT | adb:SERIAL | "
                                                     "a runner name from `edgeprobe devices`")
    p.add_argument("--token", help="token of a tcp runner (default: $EDGEPROBE_TOKEN)")
    p.add_argument("--iterations", type=int, default=iterations, help=f"timed iterations, at least (default {iterations})")
    p.add_argument("--warmup", type=int, default=warmup, help=f"untimed iterations first (default {warmup})")
    p.add_argument("--threads", type=int, default=0, help="0 = the runtime's default")
    p.add_argument("--timeout-s", type=float, default=300.0, help="kill a run that takes longer (default 300)")


def _add_min_seconds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-seconds", type=float, default=DEFAULT_MIN_SECONDS,
                   help="time iterations until at least this long has been timed, as well as --iterations "
                        f"(default {DEFAULT_MIN_SECONDS:g}: 20 iterations of a fast model are too few for a stable "
                        "figure; 0 = exactly --iterations)")


def _add_measure_args(p: argparse.ArgumentParser, iterations: int, warmup: int) -> None:
    _add_device_args(p, iterations, warmup)
    p.add_argument("--backend", help="xnnpack (default for pte) | portable | cpu (ptl)")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeprobe", description="Lower PyTorch models and measure them on devices.")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="lower a model and measure it on a device")
    _add_model_args(b)
    _add_measure_args(b, iterations=20, warmup=3)
    b.add_argument("--format", default="pte", choices=["pte", "ptl"])
    b.add_argument("--runner", choices=["native", "python"], help="default: native for pte, python for ptl")
    _add_min_seconds(b)
    b.add_argument("--no-cache", action="store_true", help="lower again even if a cached artifact exists")
    b.add_argument("--json", metavar="PATH", help="also write the result record to this file")
    h = b.add_argument_group("run hygiene (checked before the run, recorded in the result)")
    h.add_argument("--min-battery", type=float, metavar="PERCENT", help="fail if the battery is below this level")
    h.add_argument("--max-thermal-status", type=int, metavar="N",
                   help="wait (up to --thermal-wait-s), then fail, while Android's thermal status is above N "
                        "(0 none, 1 light, 2 moderate, 3 severe)")
    h.add_argument("--thermal-wait-s", type=float, default=120.0)
    h.add_argument("--cooldown-s", type=float, default=0.0, help="idle this long before the run")
    h.add_argument("--affinity", default="all", help="all | big (fastest cluster) | a core list, e.g. 4-7")
    h.add_argument("--fixed-performance", action="store_true",
                   help="Android: `cmd power set-fixed-performance-mode-enabled` during the run")
    h.add_argument("--idle-s", type=float, default=1.0,
                   help="idle window before the timed loop whose power is subtracted from the run's (energy)")
    h.add_argument("--retries", type=int, default=1,
                   help="ADB: reconnect and run again this many times after the connection is lost mid-run")

    e = sub.add_parser("export", help="lower a model to an artifact directory")
    _add_model_args(e)
    e.add_argument("--format", default="pte", choices=["pte", "ptl"])
    e.add_argument("--backend")
    e.add_argument("--out", help="artifact directory (default: the cache)")

    pr = sub.add_parser("profile", help="per-operator times from an ETDump run (ExecuTorch Inspector)")
    _add_model_args(pr)
    _add_measure_args(pr, iterations=5, warmup=1)
    pr.add_argument("--top", type=int, default=15)
    pr.add_argument("--etdump", help="keep the ETDump at this path")
    pr.add_argument("--json", metavar="PATH", help="also write the ETDump run's result record to this file")

    sw = sub.add_parser("sweep", help="compress with each recipe, measure every variant on a device, mark the "
                                      "Pareto front")
    _add_model_args(sw)
    sw.add_argument("--recipes", default="fp32,int8,int8-dynamic,magnitude:0.5,channel:0.3+int8,lowrank:0.5,cluster:16",
                    help="comma-separated recipes, steps joined by + (e.g. fp32,int8,channel:0.3+int8); "
                         "`edgeprobe recipes` lists them")
    _add_device_args(sw, iterations=20, warmup=3)
    _add_min_seconds(sw)
    sw.add_argument("--dataset", default="auto", choices=["auto", "digits", "user", "random"],
                    help="auto: digits for digits_cnn (trained first), else --eval or random inputs")
    sw.add_argument("--calibration", metavar="NPZ", help="calibration inputs (.npz: array x, or the first array)")
    sw.add_argument("--train", metavar="NPZ", help="labelled training data (.npz: x, y) for taylor/distill/qat/finetune")
    sw.add_argument("--eval", metavar="NPZ", help="evaluation data (.npz: x [, y]); labels give accuracy")
    sw.add_argument("--train-epochs", type=int, help="digits: epochs to train the model first (default 15; 0 with --weights)")
    sw.add_argument("--out", default="sweep", help="directory for sweep.json, sweep.csv and sweep.png")
    sw.add_argument("--json", metavar="PATH", help="also write the sweep (sweep.json's content) to this file")
    sw.add_argument("--wide", action="store_true", help="print every column (default: those that fit the terminal)")
    sub.add_parser("recipes", help="list the compression recipes and their parameters")

    sp = sub.add_parser("split", help="plan (and --verify end to end) where to cut a model between the device and "
                                      "a server")
    _add_model_args(sp)
    sp.add_argument("--device", default="local")
    sp.add_argument("--server", help="tcp:HOST:PORT of `edgeprobe serve` (without it: server costs timed on this "
                                     "host, no verification)")
    sp.add_argument("--device-server", metavar="tcp:HOST:PORT",
                    help="the same server as the device reaches it, if not at --server (the host's way in, which "
                         "loads the tail programs)")
    sp.add_argument("--token", help="edgeprobe serve's token (default: $EDGEPROBE_SERVE_TOKEN; never $EDGEPROBE_TOKEN)")
    sp.add_argument("--device-token", help="a tcp: device runner's token (default: $EDGEPROBE_TOKEN)")
    sp.add_argument("--uplink", default="5.85mbit")
    sp.add_argument("--downlink", default="20mbit")
    sp.add_argument("--rtt", default="40ms")
    sp.add_argument("--encoding", default="fp32", choices=["fp32", "fp16", "int8"])
    sp.add_argument("--objective", default="latency", choices=["latency", "energy"])
    sp.add_argument("--memory-limit-mb", type=float, help="device peak-memory limit (additive per-operator model)")
    sp.add_argument("--iterations", type=int, default=10)
    sp.add_argument("--warmup", type=int, default=2)
    sp.add_argument("--verify", action="store_true", help="run every candidate end to end and report the regret")
    sp.add_argument("--verify-candidates", type=int, help="verify only the N best-predicted candidates")
    sp.add_argument("--split-runner", default="auto", choices=["auto", "native", "python"],
                    help="the device half in --verify: native (the C++ runner's split mode; any device) or python "
                         "(local only); auto: python on local, native elsewhere")
    sp.add_argument("--confirm", type=int, default=3, metavar="N",
                    help="time the compiled heads of the N best-predicted splits on the device and choose with "
                         "them (0: predictions only)")
    sp.add_argument("--network", default="declared", choices=["declared", "measured"],
                    help="plan with the declared link (--uplink/--downlink/--rtt) or with the one measured to "
                         "--server (a short probe runs either way; the plan warns when they differ)")
    sp.add_argument("--packet-overhead", type=int, default=52, metavar="BYTES",
                    help="TCP/IP header bytes per 1448-byte segment carried by the link rates (default 52: "
                         "TCP/IPv4 with timestamps; 0 if the rates are goodput, e.g. from a speed test)")
    sp.add_argument("--top", type=int, default=12, help="candidate rows to print")
    sp.add_argument("--json", metavar="PATH", help="also write the plan to this file")
    sp.add_argument("--wide", action="store_true", help="print every column (default: those that fit the terminal)")

    d = sub.add_parser("devices", help="list the devices edgeprobe can reach, with their health")
    d.add_argument("--adb", action="append", default=[], metavar="HOST:PORT",
                   help="an ADB-over-TCP address to check (repeatable; also $EDGEPROBE_ADB_ADDRESSES)")
    d.add_argument("--no-usb", action="store_true", help="skip the USB scan for ADB devices")
    d.add_argument("--token", help="check zeroconf runners' authorization with this token (default: $EDGEPROBE_TOKEN; "
                                   "only an HMAC proof is sent, never the token)")
    d.add_argument("--timeout-s", type=float, default=3.0, help="per-device connect timeout")
    s = sub.add_parser("show", help="print a saved result record")
    s.add_argument("result", help="result.json written by `bench --json`")
    sub.add_parser("models", help="list the model names edgeprobe knows")

    r = sub.add_parser("runner", help="manage the device runners")
    rsub = r.add_subparsers(dest="runner_command", required=True)
    rb = rsub.add_parser("build", help="build and install the native runner for this host")
    rb.add_argument("--dest", help="install prefix (default: the user data dir)")
    rb.add_argument("--target", choices=["x86_64", "aarch64"],
                    help="cross-build for this CPU (default: this machine); aarch64 needs g++-aarch64-linux-gnu")
    rb.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    rsub.add_parser("serve", help="serve this machine's runners over TCP (+ zeroconf); options: --help",
                    add_help=False)
    sub.add_parser("serve", help="serve split tails (the cloud half) over TCP, on CUDA when available; "
                                 "options: --help", add_help=False)
    return parser


def _shape(text: Optional[str]):
    if not text:
        return None
    from edgeprobe.models import parse_input_shape

    return parse_input_shape(text)


def run(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["runner", "serve"]:
        from edgeprobe_runner.server import main as serve

        if "--native-runner" not in argv and not os.environ.get("EDGEPROBE_NATIVE_RUNNER"):
            from edgeprobe.native import find_native_runner

            try:
                os.environ["EDGEPROBE_NATIVE_RUNNER"] = str(find_native_runner())
            except EdgeprobeError:
                err_console.print("[yellow]native runner not built: serving the python runner only[/yellow]")
        return serve(argv[2:])
    if argv[:1] == ["serve"]:
        from edgeprobe.split.server import main as serve_tails

        return serve_tails(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "show":
        console.print(render_result(BenchResult.load(args.result)))
        return 0

    _quiet_libraries()
    from edgeprobe import api

    if args.command == "bench":
        result = api.bench(
            args.model, device=args.device, format=args.format, backend=args.backend, runner=args.runner,
            token=args.token, iterations=args.iterations, warmup=args.warmup, min_seconds=args.min_seconds,
            threads=args.threads,
            timeout_s=args.timeout_s, input_shape=_shape(args.input_shape), weights=args.weights,
            use_cache=not args.no_cache, progress=_progress, min_battery_percent=args.min_battery,
            max_thermal_status=args.max_thermal_status, thermal_wait_s=args.thermal_wait_s,
            cooldown_s=args.cooldown_s, affinity=args.affinity, fixed_performance=args.fixed_performance,
            idle_s=args.idle_s, retries=args.retries,
        )
        if args.json:  # saved before anything is rendered: a rendering bug must not lose a measurement
            _save(args.json, result.save)
        console.print(render_result(result))
        return 0 if result.ok else 1
    if args.command == "export":
        art = api.export(args.model, format=args.format, backend=args.backend, input_shape=_shape(args.input_shape),
                         weights=args.weights, out_dir=args.out, progress=_progress)
        m = art.manifest
        console.print(f"{art.dir}  {m.artifact_file} {_fmt_bytes(m.artifact_size_bytes)} ({m.target}/{m.backend})"
                      + ("  [dim](cached)[/dim]" if art.cached else ""))
        return 0
    if args.command == "profile":
        rep = api.profile(args.model, device=args.device, backend=args.backend, iterations=args.iterations,
                          warmup=args.warmup, threads=args.threads, timeout_s=args.timeout_s,
                          input_shape=_shape(args.input_shape), weights=args.weights, etdump_path=args.etdump,
                          progress=_progress, token=args.token)
        if args.json:
            _save(args.json, rep.result.save)
        if not rep.result.ok:
            console.print(render_result(rep.result))
            return 1
        t = Table(title=f"top operators · {rep.result.model_ref} on {rep.result.device.id} "
                        f"(ETDump run; times include tracer overhead)", title_justify="left")
        for col in ("operator", "delegated", "calls", "mean ms", "total ms", "share"):
            t.add_column(col, justify="right" if col not in ("operator", "delegated") else "left")
        total = rep.total_ms or 1.0
        for row in rep.operators[: args.top]:
            t.add_row(row.name, f"yes ({row.backend})" if row.delegated else "no", str(row.count),
                      f"{row.mean_ms:.4f}", f"{row.total_ms:.3f}", f"{100 * row.total_ms / total:.1f} %")
        console.print(t)
        return 0
    if args.command == "devices":
        from edgeprobe.devices import list_devices

        rows = list_devices(args.adb, usb=not args.no_usb, timeout_s=args.timeout_s, token=args.token,
                            log=lambda m: err_console.print(f"[dim]{escape(m)}[/dim]"))
        t = Table(title="devices")
        for col in ("id", "transport", "runner", "description", "health"):
            t.add_column(col, overflow="fold")
        for d in rows:
            style = "" if d.health.startswith(("ok", "reachable")) else "red"
            t.add_row(escape(d.id), d.transport, escape(d.runner_flavor), escape(d.description),
                      f"[{style}]{escape(d.health)}[/{style}]" if style else escape(d.health))
        console.print(t)
        return 0
    if args.command == "recipes":
        from edgeprobe.compress import valid_recipes

        console.print(escape(valid_recipes()))
        return 0
    if args.command == "sweep":
        from edgeprobe.compress.sweep import sweep

        result = sweep(args.model, args.recipes, device=args.device, dataset=args.dataset, calibration=args.calibration,
                       train=args.train, eval_data=args.eval, weights=args.weights, train_epochs=args.train_epochs, input_shape=_shape(args.input_shape),
                       iterations=args.iterations, warmup=args.warmup, min_seconds=args.min_seconds,
                       threads=args.threads, token=args.token, timeout_s=args.timeout_s, progress=_progress)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _save(out / "sweep.json", result.save_json, quiet=True)
        if args.json:
            _save(args.json, result.save_json)
        _save(out / "sweep.csv", result.save_csv, quiet=True)
        _save(out / "sweep.png", result.plot, quiet=True)
        for table in render_sweep(result, wide=args.wide):
            console.print(table)
        console.print(f"written: {out / 'sweep.json'}, {out / 'sweep.csv'}, {out / 'sweep.png'}")
        return 0 if any(r.status == "ok" for r in result.rows) else 1
    if args.command == "split":
        from edgeprobe.split import plan_split

        plan = plan_split(args.model, device=args.device, server=args.server, device_server=args.device_server,
                          token=args.token, device_token=args.device_token, uplink=args.uplink,
                          downlink=args.downlink, rtt=args.rtt, encoding=args.encoding, objective=args.objective,
                          memory_limit_bytes=int(args.memory_limit_mb * 2**20) if args.memory_limit_mb else None,
                          input_shape=_shape(args.input_shape), weights=args.weights, iterations=args.iterations,
                          warmup=args.warmup, verify=args.verify, verify_candidates=args.verify_candidates,
                          confirm=args.confirm, packet_overhead_bytes=args.packet_overhead,
                          split_runner=args.split_runner, network=args.network, progress=_progress)
        if args.json:
            _save(args.json, lambda path: atomic_write_text(path, plan.to_json() + "\n", fault="plan-save"))
        for table in render_split(plan, args.top, wide=args.wide):
            console.print(table)
        return 0
    if args.command == "models":
        from edgeprobe.models import known_names

        console.print(" ".join(known_names()))
        return 0
    if args.command == "runner" and args.runner_command == "build":
        from edgeprobe.native import build_native_runner

        path = build_native_runner(Path(args.dest) if args.dest else None, target=args.target, jobs=args.jobs,
                                   log=lambda m: err_console.print(f"[dim]{m}[/dim]"))
        console.print(f"native runner installed: {path}")
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _save(path, write, *, quiet: bool = False) -> None:
    write(path)
    _saved.append(str(path))
    if not quiet:
        _progress(f"written to {path}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``run`` with one line per failure: an EdgeprobeError says what to do (exit 2); anything else
    is a bug, reported in one line with what was already saved (exit 3; the traceback with
    EDGEPROBE_DEBUG=1)."""
    _saved.clear()
    try:
        return run(argv)
    except EdgeprobeError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line, and the data already saved stays saved
        if os.environ.get("EDGEPROBE_DEBUG"):
            import traceback

            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        kept = f"; already saved: {', '.join(_saved)}" if _saved else ""
        err_console.print(f"[red]internal error:[/red] {escape(type(exc).__name__)}: {escape(first)}{escape(kept)} "
                          "(a bug in edgeprobe; rerun with EDGEPROBE_DEBUG=1 for the traceback)", highlight=False)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
