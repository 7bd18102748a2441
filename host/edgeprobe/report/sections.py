"""The HTML of the report's table sections: the devices × models × recipes matrix (each cell's
numbers, verdict and hover text), the table of farm runs, and each device's environment and hygiene.

Everything that comes from a record is HTML-escaped (``text.esc``).
"""

from __future__ import annotations

import json
from typing import Iterable, Optional

from edgeprobe.report.sources import Cell, HistoryView, ReportData, _cell_key
from edgeprobe.report.text import (_memory_text, _ms, _not_reported, _num, _unavailable, _utc, energy_text, esc,
                                   thermal_text)

VERDICT_COLOURS = {"SLOWER": "#f4c7c3", "FASTER": "#c8e6c9", "SAME": "#e8eaed"}


def _cell_td(c: Cell, view: Optional[HistoryView], data: ReportData) -> str:
    p50s = [x.p50_ms for x in c.launches]
    attrs = {"data-source": c.source, "data-model": c.model, "data-recipe": c.recipe, "data-backend": c.backend,
             "data-format": c.format, "data-device": c.device,
             "data-p50-ms": "" if c.p50_ms is None else repr(c.p50_ms),
             "data-p90-ms": "" if c.p90_ms is None else repr(c.p90_ms),
             "data-peak-rss-delta-bytes": "" if c.peak_rss_delta_bytes is None else repr(c.peak_rss_delta_bytes),
             "data-launch-p50-ms": json.dumps(p50s), "data-launch-status": json.dumps([x.status for x in c.launches]),
             "data-verdict": (view.verdict if view and view.verdict else "none"),
             "data-baseline-p50-ms": "" if view is None or view.baseline_ms is None else repr(view.baseline_ms)}
    tip = [f"{c.model} · {c.recipe} ({c.variant}) on {c.device}, {c.source}",
           *(f"launch {x.launch}: {x.status}, p50 {_num(x.p50_ms, 6)} ms, p90 {_num(x.p90_ms, 6)} ms, "
             f"peak memory {'—' if x.peak_rss_delta_bytes is None else x.peak_rss_delta_bytes} B" for x in c.launches),
           f"cell p50 (median of launches): {_num(c.p50_ms, 6)} ms"]
    cls = ["cell"]
    if view is not None and view.verdict:
        cls.append(f"verdict-{view.verdict.lower()}")
        verdict = (f'<div class="verdict">{esc(view.verdict)} {view.change_percent:+.1f} % vs baseline '
                   f'{esc(_ms(view.baseline_ms))}</div>')
        tip.append(f"baseline {_num(view.baseline_ms, 6)} ms = median of runs {', '.join(view.baseline_runs)}; "
                   f"{view.verdict} ({view.change_percent:+.1f} %, floor ±{data.floor_percent:g} %)")
    else:
        reason = view.reason if view is not None else ("no baseline: a record file has no history" if
                                                       c.source_kind == "record" else data.history_reason)
        verdict = f'<div class="verdict none">no baseline</div>'
        tip.append(reason or "no baseline")
    failed = [x for x in c.launches if x.status != "ok"]
    if not c.ok_launches:
        cls.append("failed")
        body = ('<div class="failed">' + "; ".join(esc(f"launch {x.launch}: {x.fault_class or x.status}: "
                                                       f"{x.error or x.record_error or ''}") for x in failed) + "</div>")
    else:
        records = [x.record for x in c.ok_launches if x.record is not None]
        body = (f'<div class="p50">{esc(_ms(c.p50_ms))}</div>'
                f'<div class="sub">p90 {esc(_ms(c.p90_ms))} · {len(c.ok_launches)}/{len(c.launches)} launches</div>'
                f'<div class="mem">memory {_memory_text(c)}</div>'
                f'<div class="energy">energy {energy_text(records)}</div>')
        if failed:
            body += f'<div class="failed">{len(failed)} launch(es) failed</div>'
    attr_text = " ".join(f'{k}="{esc(v)}"' for k, v in attrs.items())
    return (f'<td class="{" ".join(cls)}" {attr_text} title="{esc(chr(10).join(t for t in tip if t))}">'
            f"{body}{verdict}</td>")


def _matrix_html(data: ReportData) -> str:
    if not data.cells:
        return '<p class="note">no measured cells: give a farm run id or bench records</p>'
    sources: dict[str, list[Cell]] = {}
    for c in data.cells:
        sources.setdefault(c.source, []).append(c)
    parts = ['<p class="legend">Each cell: measured p50 latency (median over launches of each launch\'s p50), '
             "p90, peak memory above the runner's baseline, energy per inference; colour: verdict of this run's p50 "
             f"against the history baseline (median of the last {data.baseline_runs} earlier runs, at least "
             f"{data.min_baseline_runs}; floor ±{data.floor_percent:g} %): "
             '<span class="chip verdict-slower">SLOWER</span> <span class="chip verdict-faster">FASTER</span> '
             '<span class="chip verdict-same">SAME</span> <span class="chip">no baseline</span>. '
             "Hover a cell for every launch's numbers from the database.</p>"]
    for source, cells in sorted(sources.items(), key=lambda kv: kv[1][0].source_kind != "run"):
        devices = sorted({c.device for c in cells})
        rows = sorted({(c.model, c.recipe, c.backend, c.format) for c in cells})
        by = {(c.model, c.recipe, c.backend, c.format, c.device): c for c in cells}
        kind = "farm run" if cells[0].source_kind == "run" else "record"
        t = [f'<h3>{esc(kind)} {esc(source)}</h3><table class="matrix"><tr><th>model</th><th>recipe</th>'
             "<th>backend/format</th>" + "".join(f"<th>{esc(d)}</th>" for d in devices) + "</tr>"]
        for model, recipe, backend, fmt in rows:
            t.append(f"<tr><th>{esc(model)}</th><th>{esc(recipe)}</th><th>{esc(backend)}/{esc(fmt)}</th>")
            for d in devices:
                c = by.get((model, recipe, backend, fmt, d))
                t.append(_cell_td(c, data.history.get(_cell_key(c)), data) if c else
                         '<td class="cell empty">not in this source</td>')
            t.append("</tr>")
        parts.append("".join(t) + "</table>")
    return "".join(parts)


def _runs_html(data: ReportData) -> str:
    if not data.runs:
        return ""
    rows = "".join(f"<tr><td>{esc(r['id'])}</td><td>{esc(r['farm_file'])}</td><td>{esc(_utc(r['created_utc']))}</td>"
                   f"<td>{esc(r['state'])}</td><td>{esc(', '.join(f'{k} {v}' for k, v in r['counts'].items()))}</td>"
                   "</tr>" for r in data.runs)
    return ('<table class="data runs"><tr><th>farm run</th><th>farm file</th><th>created</th><th>state</th>'
            f"<th>jobs</th></tr>{rows}</table>")


def _kv(pairs: Iterable[tuple[str, str]]) -> str:
    """Rows of (label, already-escaped HTML)."""
    return '<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def _devices_html(data: ReportData) -> str:
    ids = sorted({c.device for c in data.cells} | {d.id for d in data.devices})
    if not ids:
        return '<p class="note">no device: no measured cells</p>'
    fleet = {d.id: d for d in data.devices}
    parts = []
    for n, dev in enumerate(ids):
        launches = [(c, x) for c in sorted(data.cells, key=lambda c: c.source_kind != "run") if c.device == dev
                    for x in c.launches if x.record is not None]
        rec = launches[0][1].record if launches else None
        h = fleet.get(dev)
        env = rec.run.environment if rec is not None else None
        env_dict = dict(h.environment) if h is not None and h.environment else (
            {k: getattr(env, k) for k in ("os", "kernel", "machine", "cpu_model", "cores", "hostname")} if env else {})
        pairs = [("device", esc(dev))]
        if rec is not None:
            pairs += [("transport", esc(rec.device.transport)), ("description", esc(rec.device.description)),
                      ("runner", esc(f"{rec.run.runner.flavor} {rec.run.runner.version}, {rec.run.runner.runtime} "
                                     f"{rec.run.runner.runtime_version}") if rec.run.runner else _unavailable("no runner block")),
                      ("host versions", esc(", ".join(f"{k} {v}" for k, v in rec.host_versions.items())))]
        if h is not None:
            status = h.status + (f" until {_utc(h.quarantined_until)}: {h.quarantine_reason}" if h.quarantined_until
                                 else "")
            pairs += [("labels", esc(", ".join(f"{k}={v}" for k, v in h.labels.items()) or "none")),
                      ("farm status", esc(status)), ("failures in a row", esc(h.consecutive_failures)),
                      ("suspect", esc("yes" if h.suspect else "no")), ("last seen", esc(_utc(h.last_seen_utc)))]
        pairs += [(f"environment: {k}", _not_reported(v)) for k, v in env_dict.items()]
        if not env_dict:
            pairs.append(("environment", _unavailable("no record of this device carries an environment block")))
        parts.append(f'<div class="device" id="device-{n}"><h3>{esc(dev)}</h3>{_kv(pairs)}')
        head = ("source", "cell", "launch", "hygiene source", "battery", "charging", "thermal status before/after",
                "thermal zones", "affinity", "fixed performance", "cooldown waited", "CPU load during the run",
                "energy meter", "notes")
        t = ['<table class="data hygiene"><tr>' + "".join(f"<th>{esc(x)}</th>" for x in head) + "</tr>"]
        for c, x in launches:
            ds = x.record.device_state
            if ds is None:
                t.append(f"<tr><td>{esc(c.source)}</td><td>{esc(c.label)}</td><td>{x.launch}</td>"
                         f'<td colspan="{len(head) - 3}">{_unavailable("the record has no device state")}</td></tr>')
                continue
            load = ds.cpu_load
            if load is None:
                load_text = _unavailable("not recorded (older runner)")
            elif not load.available:
                load_text = _unavailable(load.reason)
            else:
                others = ", ".join(f"{p.name} {p.cores:.2g}" for p in load.others[:3])
                load_text = esc(f"busy {_num(load.busy_cores, 3)} of {load.cores} cores, others "
                                f"{_num(load.others_cores, 3)}" + (f" ({others})" if others else ""))
            vals = (esc(c.source), esc(c.label), esc(x.launch), esc(ds.source),
                    _not_reported(ds.battery_level_percent, lambda v: f"{v} %"),
                    _not_reported(ds.charging, lambda v: "yes" if v else "no"),
                    f"{_not_reported(ds.thermal_status)} / {_not_reported(ds.thermal_status_after)}",
                    thermal_text(x.record), esc(",".join(map(str, ds.affinity_cores)) or "not pinned"),
                    esc(ds.fixed_performance), esc(f"{ds.cooldown_waited_s:.3g} s"), load_text,
                    energy_text([x.record]), esc("; ".join(ds.notes)))
            t.append("<tr>" + "".join(f"<td>{v}</td>" for v in vals) + "</tr>")
        parts.append(("".join(t) + "</table>" if launches else '<p class="note">no record of this device</p>')
                     + "</div>")
    return "".join(parts)
