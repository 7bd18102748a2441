"""Result records: statistics against numpy, the stability formula, JSON round trips, no torch."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeprobe.errors import ResultError
from edgeprobe.request import REQUEST_SCHEMA_VERSION, Request
from edgeprobe.results import (
    SCHEMA_VERSION, BenchResult, DeviceInfo, EnergyReading, ErrorInfo, LatencyStats, Manifest, Memory, RunRecord,
    TensorSpec, Timing, from_dict, stability_score, to_dict,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10**9), min_size=2, max_size=200))
def test_stats_match_numpy(samples):
    s = LatencyStats.from_ns(samples)
    ms = np.array(samples) / 1e6
    assert s.n == len(samples)
    assert s.mean_ms == pytest.approx(ms.mean())
    assert s.std_ms == pytest.approx(ms.std(ddof=1), abs=1e-12)
    for q, got in ((50, s.p50_ms), (90, s.p90_ms), (99, s.p99_ms)):
        assert got == pytest.approx(np.percentile(ms, q))
    cut = int(0.1 * len(ms))
    kept = np.sort(ms)[cut: len(ms) - cut]
    assert s.trimmed_mean_ms == pytest.approx(kept.mean())
    assert 0.0 <= s.stability_score <= 100.0


def test_stability_score_matches_executorch_formula():
    # Perfectly stable samples score 100; CV >= 10 %, max/min >= 3 and p99/p50 >= 2 score 0.
    assert stability_score(0.0, 1.0, 1.0) == 100.0
    assert stability_score(10.0, 3.0, 2.0) == 0.0
    assert stability_score(5.0, 2.0, 1.5) == pytest.approx(0.5 * 50 + 0.25 * 50 + 0.25 * 50)
    assert LatencyStats.from_ns([1000] * 10).stability_score == pytest.approx(100.0)


def test_stats_reject_empty():
    with pytest.raises(ValueError):
        LatencyStats.from_ns([])
    assert Timing(1.0, 1.0, ()).stats is None


def _manifest() -> Manifest:
    return Manifest(
        model_ref="m", recipe="fp32", target="executorch", backend="xnnpack", format="pte",
        artifact_file="model.pte", artifact_sha256="0" * 64, artifact_size_bytes=10, vectors_file="v.epv",
        vectors_sha256="1" * 64, inputs=(TensorSpec("input0", "float32", (1, 3)),), outputs=(),
        rtol=1e-3, atol=1e-9, planned_memory_bytes=(128, 64), tool_versions={"torch": "x"}, cache_key="k",
        created_utc="2026-01-01T00:00:00+00:00", notes=("n",),
    )


def _result(run: RunRecord) -> BenchResult:
    return BenchResult(model_ref="m", device=DeviceInfo("local", "local", "native"), manifest=_manifest(), run=run,
                       host_versions={"edgeprobe": "0.1.0"}, created_utc="2026-01-01T00:00:00+00:00")


def test_round_trip_equal():
    run = RunRecord(status="ok", error=None, runner=None, config=None, verification=None,
                    timing=Timing(1.5, 2.5, (1000, 2000, 3000)),
                    memory=Memory(100, 100, 300, 0), energy=EnergyReading(False, reason="no meter"),
                    thermal=None, environment=None, artifact_size_bytes=10)
    r = _result(run)
    back = BenchResult.from_json(r.to_json())
    assert back == r
    assert back.run.memory.peak_rss_delta_bytes == 200
    assert back.manifest.planned_memory_total_bytes == 192
    assert back.stats.p50_ms == pytest.approx(0.002)


def test_error_record_round_trip():
    run = RunRecord(status="error", error=ErrorInfo("runner_crashed", "boom", "tail"), runner=None, config=None,
                    verification=None, timing=None, memory=None, energy=None, thermal=None, environment=None)
    r = _result(run)
    assert BenchResult.from_json(r.to_json()) == r
    assert not r.ok and r.stats is None


def test_schema_version_and_types_are_checked():
    good = json.loads(_result(RunRecord("ok", None, None, None, None, None, None, None, None, None)).to_json())
    with pytest.raises(ResultError, match="schema_version"):
        BenchResult.from_dict({**good, "schema_version": 99})
    bad = json.loads(json.dumps(good))
    bad["manifest"]["artifact_size_bytes"] = "ten"
    with pytest.raises(ResultError, match="artifact_size_bytes"):
        BenchResult.from_dict(bad)
    del bad["manifest"]
    with pytest.raises(ResultError, match="missing field 'manifest'"):
        BenchResult.from_dict(bad)
    with pytest.raises(ResultError, match="not valid JSON"):
        BenchResult.from_json("{")


def _versioned() -> dict:
    run = RunRecord("ok", None, None, None, None, Timing(1.0, 1.0, (5,)), None, None, None, None)
    r = dataclasses.replace(_result(run), request=Request("bench", {"model": "m", "iterations": 4}))
    return json.loads(r.to_json())


@pytest.mark.parametrize("part, known", [("manifest", SCHEMA_VERSION), ("run", SCHEMA_VERSION),
                                         ("request", REQUEST_SCHEMA_VERSION)])
def test_nested_schema_versions_newer_than_this_reader_are_refused(part, known):
    good = _versioned()
    assert good[part]["schema_version"] == known
    loaded = BenchResult.from_dict(good)  # the current versions load
    assert getattr(loaded, part).schema_version == known and loaded.request.args["iterations"] == 4
    newer = json.loads(json.dumps(good))
    newer[part]["schema_version"] = known + 1
    newer[part]["some_field_of_the_future"] = {"x": 1}  # the version is the reason, not this
    msg = (rf"^BenchResult\.{part} has schema_version {known + 1}; this edgeprobe reads up to {known}: "
           r"upgrade edgeprobe$")
    with pytest.raises(ResultError, match=msg):
        BenchResult.from_dict(newer)
    with pytest.raises(ResultError, match=msg):
        BenchResult.from_json(json.dumps(newer))
    # a newer version whose fields changed type is still refused for its version
    newer[part]["schema_version"] = 10 ** 30
    first = next(k for k in newer[part] if k != "schema_version")
    newer[part][first] = ["changed"]
    with pytest.raises(ResultError, match=f"BenchResult.{part} has schema_version 1000000000000000000000000000000; "
                                          f"this edgeprobe reads up to {known}: upgrade edgeprobe"):
        BenchResult.from_dict(newer)
    older = json.loads(json.dumps(good))
    older[part]["schema_version"] = 0  # older parts load (readers keep reading what they wrote)
    assert getattr(BenchResult.from_dict(older), part).schema_version == 0
    for bad in (None, "1", True, 1.0):  # null was taken for any field; a version must be an int
        with pytest.raises(ResultError, match=rf"^BenchResult\.{part}\.schema_version: expected int, got "):
            BenchResult.from_dict({**good, part: {**good[part], "schema_version": bad}})


def test_top_level_schema_version_newer_says_upgrade():
    with pytest.raises(ResultError, match="result has schema_version 2; this edgeprobe reads up to 1: upgrade"):
        BenchResult.from_dict({**_versioned(), "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ResultError, match="result has schema_version 0; this edgeprobe reads version 1$"):
        BenchResult.from_dict({**_versioned(), "schema_version": 0})


def test_manifest_and_runner_record_versions_checked_on_their_own_paths(tmp_path):
    # the artifact loader reads manifest.json with from_dict(Manifest, ...); the session reads the
    # runner's record with RunRecord.from_runner_json: both refuse a newer version
    m = json.loads(json.dumps(to_dict(_manifest())))
    assert from_dict(Manifest, m) == _manifest()
    with pytest.raises(ResultError, match=f"^Manifest has schema_version {SCHEMA_VERSION + 1}; this edgeprobe reads "
                                          f"up to {SCHEMA_VERSION}: upgrade edgeprobe$"):
        from_dict(Manifest, {**m, "schema_version": SCHEMA_VERSION + 1})
    rec = {**_versioned()["run"], "artifact": {"size_bytes": 10}}
    del rec["artifact_size_bytes"]
    assert RunRecord.from_runner_json(rec).artifact_size_bytes == 10
    with pytest.raises(ResultError, match="^RunRecord has schema_version 7; this edgeprobe reads up to 1: upgrade"):
        RunRecord.from_runner_json({**rec, "schema_version": 7})
    with pytest.raises(ResultError, match="^request has schema_version 3; this edgeprobe reads up to 1: upgrade"):
        from_dict(Request, {"command": "bench", "args": {}, "schema_version": 3}, "request")


def test_a_class_check_version_is_called_on_load(monkeypatch):
    # Request.check_version (request.py) is the request's own rule: from_dict applies it
    calls = []
    monkeypatch.setattr(Request, "check_version", lambda self: calls.append(self.schema_version))
    BenchResult.from_dict(_versioned())
    assert calls == [REQUEST_SCHEMA_VERSION]


def test_energy_unavailable_has_no_number():
    e = EnergyReading(False, reason="no meter")
    assert e.energy_per_inference_j(10) is None
    assert e.estimate(10) is None
    est = EnergyReading(True, meter="rapl", energy_j=2.0, duration_s=1.0).estimate(4)
    # no idle baseline: only the gross number, and it says why the net one is missing
    assert est.per_inference_j is None and est.gross_per_inference_j == 0.5 and not est.reliable and est.reason


def test_reading_results_does_not_import_torch(tmp_path):
    path = tmp_path / "r.json"
    _result(RunRecord("ok", None, None, None, None, Timing(1.0, 1.0, (5,)), None, None, None, None)).save(path)
    code = ("import sys; from edgeprobe.results import BenchResult; r = BenchResult.load(sys.argv[1]); "
            "r.stats; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert not math.isnan(BenchResult.load(path).stats.mean_ms)


def test_a_null_inside_the_samples_is_refused_not_a_crash_later():
    """Found by the fuzz suite: ``iteration_ns: [1, null]`` was accepted and crashed ``.stats``."""
    from edgeprobe.results import RunRecord
    from edgeprobe.devices.mock import ok_record

    data = ok_record((1.0, 2.0))
    data["timing"]["iteration_ns"] = [1000, None]
    with pytest.raises(ResultError, match=r"iteration_ns\[\]: expected int, got null"):
        RunRecord.from_runner_json(data)
    data["config"]["warmup"] = None
    data["timing"]["iteration_ns"] = [1000]
    with pytest.raises(ResultError, match=r"warmup: expected int, got null"):
        RunRecord.from_runner_json(data)
