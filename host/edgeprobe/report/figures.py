"""The report's plotly figures: per-iteration latency distributions, history lines with change
points, a sweep's Pareto plot (with its table) and a split plan's candidates (with its tables and policy).

Each function returns the HTML of its section's body. plotly is imported inside the functions, when
a report is rendered, never when this module is imported; plotly's JSON embedding escapes
``<``/``>``/``/`` in figure data, and record text in titles and labels is HTML-escaped.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from edgeprobe.report.sources import Cell, ReportData, _cell_key
from edgeprobe.report.text import _iso, _mib, _ms, _num, esc


class _Plots:
    """Figures rendered by plotly with stable div ids; plotly's JSON embedding escapes '<' '>' '/'."""

    def __init__(self) -> None:
        self.count = 0

    def html(self, fig: Any, div_id: str, caption: str) -> str:
        import plotly.io as pio

        self.count += 1
        fig.update_layout(template="plotly_white", font=dict(family="sans-serif"))
        fig.update_layout(margin={**dict(l=60, r=20, t=50, b=60), **(fig.layout.margin.to_plotly_json() or {})})
        body = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True})
        return f'<figure class="plot">{body}<figcaption>{esc(caption)}</figcaption></figure>'


def _dist_figures(data: ReportData, plots: _Plots) -> str:
    import plotly.graph_objects as go

    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in data.cells:
        groups.setdefault((c.source, c.device), []).append(c)
    parts = []
    ordered = sorted(groups.items(), key=lambda kv: kv[1][0].source_kind != "run")
    for n, ((source, device), cells) in enumerate(ordered):
        fig = go.Figure()
        launches = sorted({x.launch for c in cells for x in c.launches if x.samples_ms})
        for launch in launches:
            xs, ys = [], []
            for c in cells:
                for x in c.launches:
                    if x.launch == launch:
                        xs += [esc(f"{c.label} ({c.variant})")] * len(x.samples_ms)
                        ys += x.samples_ms
            fig.add_trace(go.Box(x=xs, y=ys, name=f"launch {launch}", boxpoints="all", jitter=0.4, pointpos=0,
                                 hovertemplate="%{x}<br>%{y:.4g} ms (measured)<extra>%{fullData.name}</extra>"))
        if not launches:
            parts.append(f'<p class="note">{esc(source)} on {esc(device)}: no per-iteration samples '
                         "(no launch measured)</p>")
            continue
        fig.update_layout(boxmode="group", title=esc(f"{source} on {device}"), height=420,
                          yaxis_title="measured per-iteration latency (ms)", legend_title="launch")
        parts.append(plots.html(fig, f"dist-{n}", f"raw per-iteration samples of every launch, {source} on {device} "
                                                  "(measured)"))
    return "".join(parts) or '<p class="note">no measured cells</p>'


def _history_figures(data: ReportData, plots: _Plots) -> str:
    import plotly.graph_objects as go

    if data.history_reason and not data.history:
        return f'<p class="note">{esc(data.history_reason)}</p>'
    parts, done = [], set()
    for c in data.cells:
        view = data.history.get(_cell_key(c))
        hk = (c.model, c.recipe, c.backend, c.format, c.device)
        if view is None or hk in done:
            continue
        done.add(hk)
        div = f"hist-{len(done) - 1}"
        pts = [p for p in view.points if p.value is not None]
        if not pts:
            parts.append(f'<p class="note">{esc(c.label)} on {esc(c.device)}: no history</p>')
            continue
        x = [_iso(p.created_utc) for p in pts]
        text = [esc(f"run {p.run_id} · runner {p.runner_version or '?'} · {p.os or '?'}") for p in pts]
        fig = go.Figure(go.Scatter(x=x, y=[p.value for p in pts], mode="lines+markers", name="p50 per run",
                                   text=text, hovertemplate="%{text}<br>%{y:.4g} ms (measured)<extra></extra>"))
        cps = [i for i in view.change_points if 0 <= i < len(pts)]
        if cps:
            fig.add_trace(go.Scatter(x=[x[i] for i in cps], y=[pts[i].value for i in cps], mode="markers",
                                     name="change point (new level starts)",
                                     marker=dict(symbol="x", size=14, color="#d93025", line=dict(width=2)),
                                     hovertemplate="change point: a new level starts<br>%{y:.4g} ms<extra></extra>"))
            for i in cps:
                fig.add_vline(x=x[i], line=dict(color="#d93025", dash="dot", width=1))
        if view.baseline_ms is not None:
            fig.add_hline(y=view.baseline_ms, line=dict(color="#5f6368", dash="dash"),
                          annotation_text=f"baseline {view.baseline_ms:.4g} ms", annotation_position="bottom right")
        shown = [i for i, p in enumerate(pts) if any(p.run_id == r["id"] for r in data.runs)]
        if shown:
            fig.add_trace(go.Scatter(x=[x[i] for i in shown], y=[pts[i].value for i in shown], mode="markers",
                                     name="run in this report", marker=dict(size=12, color="rgba(0,0,0,0)",
                                                                            line=dict(width=2, color="#1a73e8")),
                                     hoverinfo="skip"))
        fig.update_layout(title=esc(f"{c.model} · {c.recipe} on {c.device}"), height=360, showlegend=True,
                          legend=dict(orientation="h", yanchor="top", y=-0.3),
                          yaxis_title="measured p50 (ms)", xaxis_title="run (UTC)")
        parts.append(plots.html(fig, div, f"history of {c.label} on {c.device}: one point per farm run; "
                                          f"{len(cps)} change point(s)"))
    return ('<div class="grid">' + "".join(parts) + "</div>") if parts else '<p class="note">no history</p>'


def _sweep_quality(v: Any) -> Optional[float]:
    if v in ("inf", "-inf"):
        return math.inf if v == "inf" else -math.inf
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _sweep_html(data: ReportData, plots: _Plots) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not data.sweeps:
        return '<p class="note">no sweep record given (edgeprobe sweep … --json PATH)</p>'
    parts = []
    for n, (name, sw) in enumerate(data.sweeps):
        quality = sw.get("quality") if sw.get("quality") in ("accuracy", "sqnr_db") else "sqnr_db"
        qlabel = "accuracy (measured on the eval set)" if quality == "accuracy" else "SQNR vs fp32 (dB, measured)"
        rows = sw["rows"]
        ok = [r for r in rows if r.get("status") == "ok" and isinstance(r.get("latency_p50_ms"), (int, float))]
        finite = [q for q in (_sweep_quality(r.get(quality)) for r in ok) if q is not None and math.isfinite(q)]
        cap = (max(finite) + 10.0) if finite else 100.0
        fig = make_subplots(rows=1, cols=2, subplot_titles=(esc(qlabel), "artifact size (KiB, measured)"))
        for front in (False, True):
            sel = [r for r in ok if bool(r.get("pareto")) == front]
            qs = [_sweep_quality(r.get(quality)) for r in sel]
            qs = [cap if q is not None and math.isinf(q) else q for q in qs]
            style = dict(mode="markers+text", textposition="top center", cliponaxis=False,
                         marker=dict(symbol="star" if front else "circle", size=16 if front else 9,
                                     color="#d93025" if front else "#1a73e8"))
            name = "Pareto front" if front else "dominated"
            labels = [esc(r.get("recipe")) for r in sel]
            fig.add_trace(go.Scatter(x=[r["latency_p50_ms"] for r in sel], y=qs, text=labels, name=name,
                                     legendgroup=name, **style,
                                     hovertemplate="%{text}<br>p50 %{x:.4g} ms<br>%{y:.4g}<extra></extra>"), 1, 1)
            fig.add_trace(go.Scatter(x=[r["latency_p50_ms"] for r in sel],
                                     y=[(r.get("artifact_size_bytes") or 0) / 1024 if r.get("artifact_size_bytes")
                                        is not None else None for r in sel], text=labels, name=name,
                                     legendgroup=name, showlegend=False, **style,
                                     hovertemplate="%{text}<br>p50 %{x:.4g} ms<br>%{y:.4g} KiB<extra></extra>"), 1, 2)
        fig.update_xaxes(title_text=esc(f"measured p50 latency (ms) on {sw.get('device')}"))
        fig.update_layout(title=esc(f"{sw.get('model_ref')}: recipes measured on {sw.get('device')}"), height=460,
                          margin=dict(t=90, r=60))
        inf_note = (" An infinite SQNR (identical outputs) is drawn at the top of the axis." if
                    any(_sweep_quality(r.get(quality)) == math.inf for r in ok) else "")
        parts.append(plots.html(fig, f"sweep-{n}", f"Pareto front over (p50 latency, artifact size, {quality}); "
                                                   f"red stars are on the front.{inf_note}"))
        parts.append(_sweep_table(sw, rows))
    return "".join(parts)


def _sweep_table(sw: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    def q(v: Any) -> str:
        f = _sweep_quality(v)
        return "∞ (identical)" if f == math.inf else _num(f)

    head = ("recipe", "status", "measured p50 (ms)", "measured p90 (ms)", "CV %", "artifact (KiB, measured)",
            "packed storage (KiB, computed)", "measured peak memory", "params (nonzero)", "SQNR dB", "top-1 agree",
            "accuracy", "Pareto", "notes")
    out = [f'<p>{esc(sw.get("model_ref"))} on {esc(sw.get("device"))}, dataset {esc(sw.get("dataset"))} '
           f'({esc(sw.get("eval_samples"))} samples), created {esc(sw.get("created_utc"))}</p>',
           '<table class="data sweep"><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        size, packed = r.get("artifact_size_bytes"), r.get("storage_bytes_if_packed")
        cells = (r.get("recipe"), r.get("status") if r.get("status") == "ok" else f"error: {r.get('error')}",
                 _num(r.get("latency_p50_ms")), _num(r.get("latency_p90_ms")), _num(r.get("latency_cv_percent"), 3),
                 _num(size / 1024 if isinstance(size, (int, float)) else None),
                 _num(packed / 1024 if isinstance(packed, (int, float)) else None),
                 _mib(r.get("peak_memory_bytes")) if isinstance(r.get("peak_memory_bytes"), (int, float)) else "—",
                 f"{r.get('params')} ({r.get('nonzero_params')})", q(r.get("sqnr_db")), _num(r.get("top1_agreement")),
                 _num(r.get("accuracy")), "★" if r.get("pareto") else "",
                 "; ".join(str(x) for x in (r.get("notes") or [])) + (f" unstable: {r['unstable_reason']}"
                                                                      if r.get("unstable_reason") else ""))
        out.append("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in cells) + "</tr>")
    return '<div class="scroll">' + "".join(out) + "</table></div>"


def _split_html(data: ReportData, plots: _Plots) -> str:
    import plotly.graph_objects as go

    if not data.plans:
        return '<p class="note">no split plan given (edgeprobe split … --json PATH)</p>'
    parts = []
    for n, (name, plan) in enumerate(data.plans):
        cands = list(plan.candidates)
        parts.append(f'<h3>{esc(plan.model_ref)} on {esc(plan.device)} ({esc(name)})</h3>'
                     f'<p>chosen: <b>{esc(plan.chosen.label)}</b> · objective {esc(plan.objective)} · encoding '
                     f'{esc(plan.encoding)} · server {esc(plan.server or "none (server costs timed on this host)")} · '
                     f'link used: {esc(plan.network_source)} (uplink {plan.uplink_bps / 1e6:.4g} Mbit/s, downlink '
                     f'{plan.downlink_bps / 1e6:.4g} Mbit/s, RTT {plan.rtt_ms:.4g} ms)</p>'
                     '<p class="note">Columns marked <i>predicted</i> are the planner\'s predictions from measured '
                     "per-operator costs, not measurements; <i>measured</i> columns were timed.</p>")
        fig = go.Figure()
        labels = [esc(c.label) for c in cands]
        for attr, label in (("predicted_device_ms", "device"), ("predicted_uplink_ms", "uplink"),
                            ("predicted_server_ms", "server"), ("predicted_downlink_ms", "downlink"),
                            ("predicted_rtt_ms", "RTT"), ("predicted_overhead_ms", "software overhead")):
            fig.add_trace(go.Bar(x=labels, y=[getattr(c, attr) for c in cands], name=f"{label} (predicted)"))
        for attr, label, sym in (("measured_e2e_p50_ms", "measured end to end p50", "diamond"),
                                 ("measured_head_ms", "measured head p50 (confirm)", "circle")):
            ys = [getattr(c, attr) for c in cands]
            if any(y is not None for y in ys):
                fig.add_trace(go.Scatter(x=labels, y=ys, mode="markers", name=label,
                                         marker=dict(symbol=sym, size=11, color="#202124")))
        fig.update_layout(barmode="stack", title=esc(f"split candidates of {plan.model_ref}"), height=430,
                          yaxis_title="ms (bars: predicted; markers: measured)", yaxis_type="log")
        parts.append(plots.html(fig, f"split-{n}", "predicted latency per candidate cut, by component (a "
                                                   "prediction); measured points where the plan has them"))
        head = ("candidate", "kind", "device nodes", "bytes up", "predicted device (ms)", "predicted uplink (ms)",
                "predicted server (ms)", "predicted downlink (ms)", "predicted RTT (ms)", "predicted total (ms)",
                "measured head p50 (ms)", "confirmed total (ms, predicted with the measured head)",
                "measured e2e p50 (ms)", "prediction error", "SQNR dB (measured)", "error")
        rows = ['<table class="data split"><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
        for c in cands:
            cls = ' class="chosen"' if c.label == plan.chosen.label else ""
            vals = (c.label, c.kind, c.device_nodes, c.bytes_up, _num(c.predicted_device_ms), _num(c.predicted_uplink_ms),
                    _num(c.predicted_server_ms), _num(c.predicted_downlink_ms), _num(c.predicted_rtt_ms),
                    _num(c.predicted_total_ms),
                    _num(c.measured_head_ms) if c.measured_head_ms is not None else (c.confirm_error or "not timed"),
                    _num(c.confirmed_total_ms), _num(c.measured_e2e_p50_ms) if c.measured_e2e_p50_ms is not None
                    else "not verified", "—" if c.prediction_error is None else f"{c.prediction_error * 100:+.1f} %",
                    _num(c.sqnr_db), c.error or "")
            rows.append(f"<tr{cls}>" + "".join(f"<td>{esc(v)}</td>" for v in vals) + "</tr>")
        parts.append('<div class="scroll">' + "".join(rows) + "</table></div>")
        pol = ['<h4>Policy (from predictions): the decision by uplink bandwidth</h4><table class="data policy">'
               "<tr><th>uplink from (Mbit/s)</th><th>decision</th></tr>"]
        pol += [f"<tr><td>{bw / 1e6:.4g}</td><td>{esc(label)}</td></tr>" for bw, label in plan.policy]
        parts.append("".join(pol) + "</table>")
        extra = [("regret (chosen measured / best measured)", _num(plan.regret)),
                 ("best measured", plan.best_measured or "not verified"),
                 ("median |prediction error|", "—" if plan.median_abs_prediction_error is None
                  else f"{plan.median_abs_prediction_error * 100:.1f} %"),
                 ("per-message overhead (measured)", "not measured (no server)" if plan.per_message_overhead_bytes
                  is None else f"{plan.per_message_overhead_bytes} B"),
                 ("request overhead (measured)", "not measured (no server)" if plan.request_overhead_ms is None
                  else _ms(plan.request_overhead_ms)),
                 *((f"cost source: {k}", v) for k, v in plan.cost_sources.items()),
                 *(("note", x) for x in plan.notes)]
        parts.append('<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in extra)
                     + "</table>")
    return "".join(parts)
