"""The `edgeprobe` command line: what it prints for real records (ODPM rails, a HAL without rails,
an unstable run), that a measurement is saved before anything is rendered, one line for an
unexpected error, the device checked before any lowering, the same flags for the same things, and
tables that stay readable in an 80-column terminal."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import socket
import time

import pytest
from rich.console import Console

import edgeprobe
from edgeprobe import cli
from edgeprobe.odpm import SERVICE
from edgeprobe.results import BenchResult, EnergyReading, LatencyStats, OdpmCapture, OdpmSnapshot

from test_odpm import _capture


def _text(renderable, width: int = 120) -> str:
    c = Console(width=width, record=True, color_system=None, file=io.StringIO())
    for r in renderable if isinstance(renderable, list) else [renderable]:
        c.print(r)
    return c.export_text()


@pytest.fixture(scope="module")
def record(tiny_pte, native_runner) -> BenchResult:
    """A real record from the native runner on this machine (no energy meter here)."""
    r = edgeprobe.bench(tiny_pte, iterations=100, warmup=1)
    assert r.ok, r.run.error
    return r


RAILS = {"[S2M_VDD_CPUCL2]:CPU(BIG)": {"idle": 0.1, "run": 2.1}, "[S1M_VDD_MIF]:MIF": {"idle": 0.3, "run": 0.5}}


def _with_energy(r: BenchResult, energy: EnergyReading) -> BenchResult:
    return dataclasses.replace(r, run=dataclasses.replace(r.run, energy=energy))


def test_a_record_with_odpm_rails_renders(record):
    """Finding 3: the rails loop rebound the record's name; every ODPM record raised AttributeError."""
    r = _with_energy(record, EnergyReading(False, reason="no battery", odpm=_capture(RAILS, 1.0, 1.0)))
    text = _text(cli.render_result(r))
    n = record.stats.n
    assert f"{2.2 / n * 1e3:.3f}" in text and "mJ/inference above idle" in text  # (2.6 - 0.4) W x 1 s / n
    assert "[S2M_VDD_CPUCL2]:CPU(BIG)" in text and f"{2.0 / n * 1e3:.3f} mJ/inference" in text
    assert "device" in text and "p50" in text  # the rows after the energy block are there too


def test_a_hal_without_rails_prints_unavailable_not_zero(record):
    """Finding 12: no rails in the dumpsys text gave "gross 0.000 mJ/inference"."""
    cap = _capture(RAILS, 1.0, 1.0)
    empty = tuple(OdpmSnapshot(s.window, s.t_start_s, s.t_end_s, "PowerStats HAL: nothing metered\n")
                  for s in cap.snapshots)
    r = _with_energy(record, EnergyReading(False, reason="no battery", odpm=OdpmCapture(True, None, SERVICE, empty)))
    text = _text(cli.render_result(r))
    energy = [line for line in text.splitlines() if "energy" in line][0]
    assert "unavailable" in energy and "no energy meter section" in text
    assert not re.search(r"\b0\.000 mJ", text)


def test_an_unstable_result_says_so(record):
    """Finding 23: a noisy run is flagged, with the reason, in the table."""
    steady = record.stats
    noisy_ns = tuple(1_000_000 + (600_000 if k % 4 == 0 else 0) for k in range(40))
    assert LatencyStats.from_ns(noisy_ns).unstable_reason and "CV" in LatencyStats.from_ns(noisy_ns).unstable_reason
    assert LatencyStats.from_ns((1_000_000,) * 39 + (1_010_000,)).unstable_reason is None
    r = dataclasses.replace(record, run=dataclasses.replace(
        record.run, timing=dataclasses.replace(record.run.timing, iteration_ns=noisy_ns)))
    text = _text(cli.render_result(r))
    assert "not a stable figure" in text and "--min-seconds" in text
    if steady.unstable_reason is None:
        assert "not a stable figure" not in _text(cli.render_result(record))
    # the record says what else used the CPU during the run, read from /proc on this machine
    load = record.device_state.cpu_load
    assert load.available and load.cores and load.busy_cores is not None and load.processes_seen > 10
    assert "other CPU use" in _text(cli.render_result(record))


def test_a_render_failure_after_bench_keeps_the_json(tiny_pte, native_runner, tmp_path, monkeypatch, capsys):
    """Finding 3: save first, render second; an unexpected error is one line, exit 3, the record kept."""
    def broken(_r):
        raise AttributeError("'RailEstimate' object has no attribute 'manifest'")

    monkeypatch.setattr(cli.render, "render_result", broken)  # main.py renders through cli.render
    out = tmp_path / "r.json"
    rc = cli.main(["bench", str(tiny_pte.dir), "--iterations", "3", "--min-seconds", "0", "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_INTERNAL
    r = BenchResult.load(out)
    assert r.ok and len(r.run.timing.iteration_ns) == 3
    line = [x for x in err.splitlines() if "internal error" in x]
    assert line and "AttributeError" in err and "EDGEPROBE_DEBUG=1" in err and str(out) in err
    assert "Traceback" not in err
    monkeypatch.setenv("EDGEPROBE_DEBUG", "1")
    assert cli.main(["bench", str(tiny_pte.dir), "--iterations", "2", "--min-seconds", "0"]) == cli.EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("command", ["bench", "profile", "sweep", "split"])
def test_a_bad_device_fails_before_any_lowering(command, tmp_path, monkeypatch, capsys):
    """Finding 20: a bad id or a closed port is reported at once, and nothing is lowered."""
    from edgeprobe.devices.adb import load_signer

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEPROBE_CACHE_DIR", str(cache))
    monkeypatch.setenv("EDGEPROBE_ADB_KEY", str(tmp_path / "adbkey"))
    load_signer()  # the key pair is made once, on first use: not part of what is timed
    extra = {"sweep": ["--recipes", "fp32", "--out", str(tmp_path / "sw")]}.get(command, [])
    port = _closed_port()
    for device, says in (("adb:nonexistent", "adb-shell[usb]"), (f"adb:127.0.0.1:{port}", "not found or offline"),
                         (f"tcp:127.0.0.1:{port}", "cannot reach runner"), ("bogus:x", "unknown device")):
        t0 = time.monotonic()
        token = ["--token" if command != "split" else "--device-token", "t0ken"]
        rc = cli.main([command, "tiny_cnn", "--device", device, *token, *extra])
        took = time.monotonic() - t0
        err = capsys.readouterr().err
        assert rc == cli.EXIT_USAGE, (device, err)
        assert says in err and "Traceback" not in err, (device, err)
        assert took < 2.5, (device, took)
        assert not cache.exists() or not any(cache.iterdir()), f"{command} {device}: lowered before failing"


def test_the_same_things_get_the_same_flags():
    """Finding 21: sweep has --json like bench, profile and split; the measuring commands share
    --device, --token, --iterations, --warmup, --threads, --timeout-s; bench and sweep --min-seconds."""
    p = cli.build_parser()
    sub = next(a for a in p._actions if a.dest == "command").choices

    def flags(name):
        return {s for a in sub[name]._actions for s in a.option_strings}

    for name in ("bench", "profile", "sweep", "split"):
        assert "--json" in flags(name), name
    for name in ("bench", "profile", "sweep"):
        assert {"--device", "--token", "--iterations", "--warmup", "--threads", "--timeout-s"} <= flags(name), name
    for name in ("sweep", "split"):
        assert "--wide" in flags(name), name
    # a minimum measuring time as well as a count, by default
    assert p.parse_args(["bench", "m"]).min_seconds == cli.DEFAULT_MIN_SECONDS >= 1.0
    assert p.parse_args(["sweep", "m"]).min_seconds == cli.DEFAULT_MIN_SECONDS
    assert p.parse_args(["sweep", "m", "--json", "x.json"]).json == "x.json"


def _cells_unbroken(text: str, values) -> None:
    for v in values:
        assert v in text, f"{v!r} is cut or wrapped in:\n{text}"


def _split_plan():
    from edgeprobe.split import CandidateRow, SplitPlan

    def row(label, kind, n, up, dev, upl, srv, down, pred, measured=None, head=None, confirm_error=None, err=None):
        names = tuple(f"n{k}" for k in range(n))
        return CandidateRow(label, kind, n, (), up, dev, upl, srv, down, 40.0, pred, measured_e2e_p50_ms=measured,
                            prediction_error=None if measured is None else (pred - measured) / measured,
                            sqnr_db=None if measured is None else 41.234, error=err, device_node_names=names,
                            predicted_overhead_ms=1.5, measured_head_ms=head,
                            confirmed_total_ms=None if head is None else pred - dev + head, confirm_error=confirm_error)

    dev_only = row("device-only", "device-only", 70, 4_000, 51.234, 0.683, 0.0, 0.401, 93.818, 95.432)
    cloud = row("cloud-only", "cloud-only", 0, 602_112, 0.0, 823.456, 4.567, 0.401, 870.123, 880.987)
    cands = [row("after layer4_1_relu_1", "split", 64, 100_352, 48.765, 137.234, 0.321, 0.401, 228.221, 230.456,
                 head=47.111),
             row("after layer3_1_relu_1", "split", 48, 200_704, 38.123, 274.567, 1.234, 0.401, 355.825, 359.999,
                 head=39.222),
             row("after layer2_0_downsample_1", "split", 30, 401_408, 22.456, 549.123, 2.345, 0.401, 617.825, None,
                 confirm_error="load_failed: the head did not load on the device", err="runner_crashed: signal 11")]
    return SplitPlan("resnet18", "adb:127.0.0.1:5555", "tcp:10.0.0.2:7000", 5.85e6, 20e6, 40.0, "fp32", "latency",
                     99, 52, 1.5, dev_only, dev_only, cloud, (dev_only, *cands, cloud),
                     ((0.0, "device-only"), (120e6, "after layer4_1_relu_1")), {"device": "measured (ETDump)"},
                     "2026-12-01T00:00:00+00:00", regret=1.0, best_measured="device-only",
                     median_abs_prediction_error=0.021)


def test_split_table_fits_80_columns():
    """Finding 22: at 80 columns every cell is whole; the rest with --wide (and in --json)."""
    plan = _split_plan()
    text = _text(cli.render_split(plan), width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    _cells_unbroken(text, ["after layer4_1_relu_1", "after layer2_0_downsample_1", "228.221", "230.456", "93.818",
                           "95.432", "870.123", "-1.7 %", "226.567", "runner_crashed: signal 11"])
    assert "--wide" in text
    wide = _text(cli.render_split(plan, wide=True), width=250)
    _cells_unbroken(wide, ["100,352", "137.234", "51.234", "41.2", "47.111", "41.5"])  # 40 ms RTT + 1.5 ms software


def test_sweep_table_fits_80_columns():
    from edgeprobe.compress.sweep import SweepResult, SweepRow

    rows = (SweepRow("fp32", "ok", latency_p50_ms=51.2345, latency_p90_ms=53.0123, iterations=40,
                     artifact_size_bytes=46_800_000, peak_memory_bytes=60_000_000, params=11_689_512,
                     nonzero_params=11_689_512, sqnr_db=float("inf"), cosine=1.0, top1_agreement=1.0, accuracy=0.9722,
                     pareto=True),
            SweepRow("int8", "ok", latency_p50_ms=20.4567, latency_p90_ms=21.0, iterations=98,
                     artifact_size_bytes=11_900_000, peak_memory_bytes=20_000_000, params=11_689_512,
                     nonzero_params=11_689_512, sqnr_db=31.2, cosine=0.99912, top1_agreement=0.994, accuracy=0.9694,
                     pareto=True, unstable_reason="CV 10.9 % > 5 %"),
            SweepRow("channel:0.3+int8", "ok", latency_p50_ms=12.3456, latency_p90_ms=13.0, iterations=160,
                     artifact_size_bytes=6_100_000, params=5_000_000, nonzero_params=5_000_000, sqnr_db=18.3,
                     accuracy=0.9416),
            SweepRow("cluster:16", "ok", latency_p50_ms=51.0001, artifact_size_bytes=46_800_000,
                     storage_bytes_if_packed=6_000_000, accuracy=0.9611),
            SweepRow("taylor:0.5", "error", error="UsageError: taylor needs labelled training data (--train)"))
    r = SweepResult("digits_cnn", "local", "digits", 359, 0.9722, rows, "2026-12-01T00:00:00+00:00", "accuracy")
    text = _text(cli.render_sweep(r), width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    _cells_unbroken(text, ["channel:0.3+int8", "51.2345", "20.4567", "12.3456", "44.6 MiB", "11.3 MiB", "0.25",
                           "0.972", "0.942", "taylor needs labelled training data (--train)"])
    assert "not a stable figure: int8: CV 10.9 % > 5 %" in " ".join(text.split())
    wide = _text(cli.render_sweep(r, wide=True), width=250)
    _cells_unbroken(wide, ["11,689,512", "0.99912", "53.0123", "57.2 MiB", "5.7 MiB if packed"])


def test_rerun_a_bench_record(tiny_pte, native_runner, tmp_path, capsys):
    """`edgeprobe rerun RECORD`: the stored request run again, rendered as bench renders it, the new
    record saved with --save and carrying the same request."""
    first, again = tmp_path / "first.json", tmp_path / "again.json"
    assert cli.main(["bench", str(tiny_pte.dir), "--iterations", "3", "--warmup", "1", "--min-seconds", "0",
                     "--json", str(first)]) == 0
    old = BenchResult.load(first)
    assert old.request is not None and old.request.command == "bench" and old.request.args["iterations"] == 3
    capsys.readouterr()
    assert cli.main(["rerun", str(first), "--save", str(again)]) == 0
    out = capsys.readouterr().out
    assert "latency" in out and "p50" in out
    new = BenchResult.load(again)
    assert new.ok and new.request == old.request and len(new.run.timing.iteration_ns) == 3
    # a record that is not a bench record (sweep.json, a split plan) is read for its request alone
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"model_ref": "m", "request": dataclasses.asdict(old.request)}))
    assert cli.main(["rerun", str(plain), "--save", str(again)]) == 0
    assert BenchResult.load(again).request == old.request


def test_rerun_refuses_a_record_without_a_request(record, tmp_path, capsys):
    """A record written before records carried their request, or a file with none: one line, exit 2."""
    bench_record = tmp_path / "old.json"
    dataclasses.replace(record, request=None).save(bench_record)
    other = tmp_path / "sweep.json"
    other.write_text('{"model_ref": "m", "rows": []}\n')
    for path in (bench_record, other, tmp_path / "missing.json"):
        assert cli.main(["rerun", str(path)]) == cli.EXIT_USAGE, path
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err, err
        if path != tmp_path / "missing.json":
            assert "carries no request" in err
