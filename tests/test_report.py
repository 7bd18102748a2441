"""The offline HTML report (issue 14, items 5 and 6): built from a real farm run measured twice (so a
history exists), a real sweep and a real split plan, then opened as a file:// URL in Debian's
headless chromium through Playwright: no console error, no network request but the file itself,
every section and every plot rendered, a matrix cell's data and tooltip carry the numbers of
``jobs.results``. A screenshot of each section goes to $EDGEPROBE_REPORT_SHOTS (else tmp_path).
The unit tests need no browser: an unavailable meter reads "unavailable: <reason>", never 0, and
record text is escaped."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import chromium
from edgeprobe.farm import jobs
from edgeprobe.farm.db.engine import open_db
from edgeprobe.farm.inventory import parse_farm
from edgeprobe.farm.scheduler import run_farm
from edgeprobe.report import build

SECTIONS = [sid for sid, _ in build.SECTIONS]
FARM = '''
[[device]]
id = "local"
labels = { tier = "host" }

[matrix]
models = ["tiny_cnn"]
recipes = ["fp32", "int8"]
launches = 2
iterations = 3
warmup = 1
'''


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "edgeprobe", *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "COLUMNS": "200"})
    assert p.returncode == 0, (args, p.stderr[-3000:])
    return p


@pytest.fixture(scope="module")
def sources(tmp_path_factory, native_runner):
    """A farm database with runs r1 and r2 of the same matrix, a sweep record and a split plan (real)."""
    tmp = tmp_path_factory.mktemp("report")
    env_before = os.environ.get("EDGEPROBE_RUNNER_DIR")
    os.environ["EDGEPROBE_RUNNER_DIR"] = str(native_runner.parent.parent.parent)  # module scope: no monkeypatch
    try:
        url = f"sqlite:///{tmp / 'farm.sqlite'}"
        db = open_db(url)
        farm = parse_farm(FARM, str(tmp / "farm.toml"))
        for run_id in ("r1", "r2"):
            assert run_farm(farm, db=db, run_id=run_id).exit_code == 0
        _cli("sweep", "tiny_cnn", "--recipes", "fp32,int8,magnitude:0.5", "--iterations", "3", "--warmup", "1",
             "--min-seconds", "0", "--out", str(tmp / "sw"), "--json", str(tmp / "sweep.json"))
        _cli("split", "tiny_cnn", "--uplink", "1.1mbit", "--rtt", "40ms", "--iterations", "3", "--warmup", "1",
             "--json", str(tmp / "plan.json"))
        _cli("bench", "tiny_cnn", "--iterations", "5", "--warmup", "1", "--min-seconds", "0",
             "--json", str(tmp / "bench.json"))
    finally:
        if env_before is None:
            os.environ.pop("EDGEPROBE_RUNNER_DIR", None)
        else:
            os.environ["EDGEPROBE_RUNNER_DIR"] = env_before
    return {"url": url, "db": db, "dir": tmp, "sweep": tmp / "sweep.json", "plan": tmp / "plan.json",
            "bench": tmp / "bench.json"}


@pytest.fixture(scope="module")
def report(sources):
    out = sources["dir"] / "report.html"
    p = _cli("report", "r2", str(sources["bench"]), str(sources["sweep"]), str(sources["plan"]), "--db",
             sources["url"], "--out", str(out), "--min-baseline-runs", "1")
    assert "report written" in p.stdout
    return out


def _shots_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("EDGEPROBE_REPORT_SHOTS") or tmp_path / "shots")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.mark.real_peer("chromium")
def test_the_report_renders_offline_in_headless_chromium(report, sources, tmp_path):
    reason = chromium.missing_reason()
    if reason:
        pytest.skip(reason)
    url = report.resolve().as_uri()
    requests, console, errors = [], [], []
    with chromium.chromium() as ctx:
        page = ctx.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, wait_until="load")
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length === "
                               "document.querySelectorAll('.plotly-graph-div').length", timeout=30_000)
        assert requests == [url], requests  # the file itself, nothing else: no CDN, no font, no beacon
        assert not errors, errors
        assert not [c for c in console if c[0] in ("error", "warning")], console
        for sid in SECTIONS:
            assert page.locator(f"section#{sid}").count() == 1, sid
        # every plot rendered: each plotly div has its SVG with drawn traces
        plots = page.locator(".js-plotly-plot")
        n = plots.count()
        assert n >= 5, n  # 2 distributions (run, bench record), 2 histories, sweep, split
        for i in range(n):
            plot = plots.nth(i)
            assert plot.locator("svg.main-svg").count() >= 1, plot.get_attribute("id")
            assert plot.locator("g.trace, g.boxlayer path, g.barlayer path, g.scatterlayer path").count() > 0, \
                plot.get_attribute("id")
        for sid in ("distributions", "history", "sweep", "split"):
            assert page.locator(f"section#{sid} .js-plotly-plot").count() >= 1, sid
        # a matrix cell carries the p50 of jobs.results: each launch's value, and their median
        rows = [r for r in jobs.results(sources["db"], "r2") if r["model"] == "tiny_cnn" and r["recipe"] == "int8"]
        cell = page.locator('td.cell[data-source="r2"][data-recipe="int8"][data-device="local"]')
        assert cell.count() == 1
        launch_p50 = json.loads(cell.get_attribute("data-launch-p50-ms"))
        assert launch_p50 == [r["p50_ms"] for r in sorted(rows, key=lambda r: r["launch"])]
        assert float(cell.get_attribute("data-p50-ms")) == statistics.median(launch_p50)
        title = cell.get_attribute("title")
        for r in rows:
            assert f"launch {r['launch']}: ok, p50 {r['p50_ms']:.6g} ms" in title, title
        # two runs in the history: r2 has a verdict against r1 (--min-baseline-runs 1), and its colour
        assert cell.get_attribute("data-verdict") in ("SAME", "SLOWER", "FASTER")
        assert "verdict-" in cell.get_attribute("class")
        cell.hover()
        # the bench record's cell has no history: no colour, "no baseline"
        bench = page.locator('td.cell[data-source="bench.json"]')
        assert bench.count() == 1 and bench.get_attribute("data-verdict") == "none"
        assert "no baseline" in bench.inner_text()
        # an unavailable meter is shown with its reason, never as 0
        assert "unavailable: " in page.locator("section#devices").inner_text()
        assert "predicted" in page.locator("section#split").inner_text()
        shots = _shots_dir(tmp_path)
        for sid in SECTIONS:
            path = shots / f"{sid}.png"
            page.locator(f"section#{sid}").screenshot(path=str(path))
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        page.screenshot(path=str(shots / "page.png"), full_page=True)


def test_a_record_file_report_needs_no_database(sources, tmp_path):
    from plotly.offline import get_plotlyjs

    html = build.render(build.collect([sources["bench"], sources["sweep"], sources["plan"]]))
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html
    assert "no farm run given" in html and "Pareto front" in html
    assert html.count(get_plotlyjs()) == 1  # inlined once
    page = html.replace(get_plotlyjs(), "")
    assert "<script src" not in page and "<link" not in page and "http://" not in page and "https://" not in page


def test_two_runs_without_enough_history_say_no_baseline(sources):
    data = build.collect(["r2"], db=sources["db"])  # default: 3 earlier runs needed, r1 is the only one
    assert {c.recipe for c in data.cells} == {"fp32", "int8"}
    for c in data.cells:
        view = data.history[build._cell_key(c)]
        assert [p.run_id for p in view.points] == ["r1", "r2"] and view.verdict is None
        assert view.reason.startswith("no baseline: 1 earlier good run(s)")
    html = build.render(data)
    assert html.count('data-verdict="none"') == 2 and "verdict-" not in html.split('<section id="matrix">')[1][:200]


def test_change_points_are_marked_on_the_history_plot():
    from collections import namedtuple

    point = namedtuple("P", "run_id created_utc value runner_version os")
    pts = tuple(point(f"r{i}", 1.7e9 + i * 60, v, "0.1.0", "Linux") for i, v in enumerate([1.0, 1.01, 0.99, 1.5, 1.52]))
    cell = build.Cell("r4", "run", "m", "fp32", "xnnpack", "pte", "local", (build.Launch(0, "ok", p50_ms=1.52),))
    data = build.ReportData(cells=[cell])
    data.history[build._cell_key(cell)] = build.HistoryView(points=pts, change_points=(3,), baseline_ms=1.0,
                                                            verdict="SLOWER", change_percent=52.0)
    html = build._history_figures(data, build._Plots())
    assert "change point (new level starts)" in html and '"x":["' in html and "baseline 1 ms" in html


def _record(tmp_path: Path, evil: str) -> Path:
    """A saved bench record with no energy, thermal or memory meter, and record text that holds markup."""
    from edgeprobe.results import (BenchResult, DeviceInfo, DeviceState, EnergyReading, Manifest, Memory, RunRecord,
                                   ThermalReading, Timing)

    m = Manifest(evil, "fp32", "executorch", "xnnpack", "pte", "model.pte", "0" * 64, 1000, "v.bin", "0" * 64, (),
                 (), 1e-3, 1e-5, (), {}, "k", "2026-01-01T00:00:00+00:00")
    run = RunRecord("ok", None, None, None, None, Timing(1.0, 1.0, (1_000_000, 1_100_000, 1_200_000)),
                    Memory(None, None, None, None), EnergyReading(False, reason=f"no meter {evil}"),
                    ThermalReading(False, reason="no thermal zones"), None)
    r = BenchResult(evil, DeviceInfo(f"dev{evil}", "local", "native", description=evil), m, run, {}, "2026",
                    device_state=DeviceState("sysfs", notes=(evil,)))
    return r.save(tmp_path / "evil.json")


def test_unavailable_meters_read_unavailable_and_record_text_is_escaped(tmp_path):
    evil = '<script>alert("x")</script>'
    path = _record(tmp_path, evil)
    html = build.render(build.collect([path]))
    assert evil not in html and "<script>alert" not in html
    assert html.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 3  # model, device, notes, reason
    assert "unavailable: no meter &lt;script&gt;" in html
    assert "unavailable: no thermal zones" in html
    assert "unavailable: the runner could not read peak memory" in html
    assert "0 mJ" not in html and "0.00 MiB" not in html
    cell = build.collect([path]).cells[0]
    assert cell.peak_rss_delta_bytes is None and build.energy_text([cell.launches[0].record]).startswith(
        '<span class="unavailable">unavailable: no meter')


def test_bad_sources_are_refused_clearly(tmp_path):
    from edgeprobe.errors import UsageError

    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(UsageError, match="not a record of bench, sweep or split"):
        build.collect([tmp_path / "x.json"])
    with pytest.raises(UsageError, match="neither a record file nor a farm run"):
        build.collect(["no-such-run"], db_url=f"sqlite:///{tmp_path / 'f.sqlite'}")


def test_importing_the_report_imports_no_torch():
    code = ("import sys, edgeprobe.report, edgeprobe.cli.report; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'executorch', 'plotly'}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr
