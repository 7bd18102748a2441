"""`edgeprobe sweep`: every recipe measured on the local device, a failing recipe as a row, Pareto front."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from edgeprobe.compress.sweep import SweepRow, pareto_front, sweep


def test_pareto_front_by_hand():
    rows = [SweepRow("a", "ok", latency_p50_ms=1.0, artifact_size_bytes=100, accuracy=0.9),
            SweepRow("b", "ok", latency_p50_ms=2.0, artifact_size_bytes=100, accuracy=0.9),   # dominated by a
            SweepRow("c", "ok", latency_p50_ms=2.0, artifact_size_bytes=50, accuracy=0.8),    # smaller
            SweepRow("d", "ok", latency_p50_ms=3.0, artifact_size_bytes=200, accuracy=0.95),  # most accurate
            SweepRow("e", "error", error="boom")]
    assert pareto_front(rows, "accuracy") == {0, 2, 3}


def test_sweep_cli_on_digits_prints_the_measured_table_and_writes_outputs(tmp_path, native_runner):
    out = tmp_path / "sw"
    p = subprocess.run(
        [sys.executable, "-m", "edgeprobe", "sweep", "digits_cnn", "--recipes", "fp32,int8,magnitude:0.5,channel:0.3+int8",
         "--train-epochs", "5", "--iterations", "5", "--warmup", "1", "--min-seconds", "0", "--out", str(out),
         "--json", str(tmp_path / "copy.json")],
        capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "250"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Pareto front" in p.stdout and "accuracy" in p.stdout
    data = json.loads((out / "sweep.json").read_text())
    assert json.loads((tmp_path / "copy.json").read_text()) == data  # --json, as in bench and split
    rows = {r["recipe"]: r for r in data["rows"]}
    assert set(rows) == {"fp32", "int8", "magnitude:0.5", "channel:0.3+int8"}
    assert all(r["status"] == "ok" and r["latency_p50_ms"] > 0 and r["iterations"] == 5 for r in rows.values())
    assert all(r["latency_cv_percent"] >= 0 and ("unstable_reason" in r) for r in rows.values())
    assert data["dataset"] == "digits" and data["eval_samples"] == 359 and data["quality"] == "accuracy"
    assert rows["int8"]["artifact_size_bytes"] * 3 <= rows["fp32"]["artifact_size_bytes"]
    assert abs(rows["int8"]["accuracy"] - rows["fp32"]["accuracy"]) <= 0.02
    # unstructured sparsity: half the weights are zero, the dense .pte is not smaller, and the output says so
    assert rows["magnitude:0.5"]["nonzero_params"] < 0.51 * rows["magnitude:0.5"]["params"]
    assert rows["magnitude:0.5"]["artifact_size_bytes"] == rows["fp32"]["artifact_size_bytes"]
    assert any("no speed-up" in n for n in rows["magnitude:0.5"]["notes"])
    assert rows["channel:0.3+int8"]["params"] < 0.6 * rows["fp32"]["params"]
    assert any(r["pareto"] for r in rows.values())
    assert rows["fp32"]["sqnr_db"] > 60 and rows["int8"]["sqnr_db"] < rows["fp32"]["sqnr_db"]
    with open(out / "sweep.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_recipe_is_a_row_not_a_crash(native_runner):
    """No labels (random inputs): taylor cannot compute gradients and reports why; the rest is measured
    (for at least min_seconds each, as well as the iterations)."""
    r = sweep("tiny_cnn", "fp32,taylor:0.5,int8", iterations=3, warmup=1, min_seconds=0.2)
    rows = {x.recipe: x for x in r.rows}
    assert rows["fp32"].status == "ok" and rows["int8"].status == "ok"
    assert rows["taylor:0.5"].status == "error" and "labelled training data" in rows["taylor:0.5"].error
    assert r.quality == "sqnr_db" and rows["fp32"].accuracy is None
    assert rows["int8"].sqnr_db is not None and any("RANDOM INPUTS" in n for n in rows["int8"].notes)
    assert rows["fp32"].iterations > 3 and rows["int8"].iterations > 3  # 0.2 s of a ~0.02 ms model


def test_bad_recipe_fails_before_any_work():
    from edgeprobe.errors import UsageError

    with pytest.raises(UsageError, match="valid recipes"):
        sweep("digits_cnn", "fp32,int8,nope")
