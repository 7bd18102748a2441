"""`edgeprobe recommend`: real lowering to several runtimes, fidelity of each artifact scored on its own
runtime, real measurements on `local`, and the choice within the accuracy budget."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import edgeprobe
from edgeprobe.compress.fidelity import evaluate
from edgeprobe.errors import UsageError
from edgeprobe.lower import capabilities, load_artifact
from edgeprobe.models import load_model
from edgeprobe.recommendation import CandidateRow, choose


def _inputs(n: int, seed: int) -> torch.Tensor:
    shape = load_model("tiny_cnn").example_inputs[0].shape[1:]
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def rec(isolated_cache, native_runner):
    return edgeprobe.recommend("tiny_cnn", formats=["pte", "onnx"], recipes=["fp32", "int8"], threads=[1],
                               eval_data=_inputs(48, 1), calibration=_inputs(32, 2), iterations=8, warmup=1)


def test_recommended_artifact_is_measured_and_its_fidelity_reproduces(rec):
    assert rec.recommended is not None and rec.reason is None
    best = rec.rows[rec.recommended]
    assert best.status == "ok" and best.within_budget and best.p50_ms > 0 and best.iterations == 8
    art = load_artifact(best.artifact)  # a real artifact: its files match their sha256s
    assert (art.manifest.format, art.manifest.target) == (best.format, best.runtime)
    assert art.manifest.recipe == best.recipe
    spec = load_model("tiny_cnn")
    again = evaluate(art.model_path, spec.module.eval(), edgeprobe.compress.Dataset(_inputs(48, 1)),
                     spec.example_inputs)
    assert again.top1_agreement == pytest.approx(best.top1_agreement)
    assert again.sqnr_db == pytest.approx(best.sqnr_db, rel=1e-6)


def test_table_has_every_candidate_with_its_reason(rec):
    cells = {(r.format, r.recipe.split(":")[0]): r for r in rec.rows}
    assert set(cells) == {("pte", "fp32"), ("pte", "int8"), ("onnx", "fp32"), ("onnx", "int8")}
    assert cells[("onnx", "int8")].status == "not_applicable" and "ExecuTorch" in cells[("onnx", "int8")].error
    assert cells[("onnx", "int8")].p50_ms is None  # not measured: null, never 0
    for key in (("pte", "fp32"), ("pte", "int8"), ("onnx", "fp32")):
        r = cells[key]
        assert r.status == "ok" and r.p50_ms > 0 and r.threads_used == 1 and r.runtime_version
        assert 0 <= r.top1_agreement <= 1 and r.accuracy_drop_points == pytest.approx(100 * (1 - r.top1_agreement))
    assert cells[("pte", "fp32")].sqnr_db > 60  # fp32 lowering: the same arithmetic up to rounding
    assert cells[("pte", "int8")].sqnr_db < cells[("pte", "fp32")].sqnr_db  # int8 really is int8
    peer = rec.rows[rec.fastest_fp32_peer]
    assert peer.recipe == "fp32" and rec.ratio == pytest.approx(rec.rows[rec.recommended].p50_ms / peer.p50_ms)


def test_json_has_the_documented_fields(rec, tmp_path):
    d = json.loads(json.dumps(rec.to_dict()))
    assert set(d["recommended"]) >= {"runtime", "recipe", "p50_ms", "top1_agreement", "sqnr_db", "artifact"}
    assert set(d["fastest_fp32_peer"]) >= {"runtime", "p50_ms"} and d["ratio"] > 0
    assert len(d["candidates"]) == len(rec.rows) and d["schema_version"] == 1


def _row(recipe: str, p50: float, drop: float | None, status: str = "ok") -> CandidateRow:
    return CandidateRow("rt", "pte", "xnnpack", recipe, 1, status, p50_ms=p50 if status == "ok" else None,
                        accuracy_drop_points=drop, within_budget=None if drop is None else drop <= 1.0)


def test_choose_keeps_the_budget_and_ignores_unmeasured_rows():
    rows = [_row("fp32", 10.0, 0.0), _row("int8", 4.0, 5.0), _row("fp16", 7.0, 0.5), _row("int8w", 1.0, None),
            _row("x", 0.5, 0.0, status="error")]
    best, peer, reason = choose(rows, 1.0)
    assert (best, peer, reason) == (2, 0, None)  # the faster int8 is over budget; unknown fidelity never counts
    best, _, reason = choose([_row("int8", 4.0, 5.0)], 1.0)
    assert best is None and "within 1 points" in reason


def test_without_eval_data_it_is_refused_with_what_to_pass():
    with pytest.raises(UsageError, match=r"--eval PATH\.npz.*--eval photos"):
        edgeprobe.recommend("tiny_cnn", formats=["pte"], recipes=["fp32"])


def test_a_runtime_that_is_not_installed_is_a_row_saying_how(monkeypatch, isolated_cache, native_runner):
    monkeypatch.setattr(capabilities, "_missing", lambda module: module == "onnxruntime")
    rec = edgeprobe.recommend("tiny_cnn", formats=["onnx", "pte"], recipes=["fp32"], threads=[1],
                              eval_data=_inputs(8, 3), iterations=3, warmup=0)
    onnx = next(r for r in rec.rows if r.format == "onnx")
    assert onnx.status == "unavailable" and "pip install edgeprobe[onnx]" in onnx.error and onnx.p50_ms is None
    assert rec.rows[rec.recommended].format == "pte"  # the others still ran


def test_cli_writes_json_and_exits_0(tmp_path, isolated_cache, native_runner):
    npz = tmp_path / "eval.npz"
    np.savez(npz, x=_inputs(16, 4).numpy())
    out = tmp_path / "rec.json"
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "recommend", "tiny_cnn", "--eval", str(npz),
                        "--formats", "pte", "--recipes", "fp32", "--threads", "1", "--iterations", "3",
                        "--warmup", "0", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    d = json.loads(out.read_text())
    assert d["recommended"]["runtime"] == "executorch" and d["recommended"]["p50_ms"] > 0
    assert "recommended: executorch fp32" in p.stdout


def test_eval_photos_calibrates_on_the_other_photos(isolated_cache, native_runner):
    """--eval photos: evaluation crops of scikit-image's evaluation photos, int8 calibrated on the
    disjoint calibration photos (not on random inputs: the manifest carries no random-calibration warning)."""
    from edgeprobe.compress.quantize import RANDOM_CALIBRATION_WARNING

    rec = edgeprobe.recommend("tiny_cnn", formats=["pte"], recipes=["int8"], threads=[1], eval_data="photos",
                              iterations=3, warmup=0, eval_samples=16)
    assert "scikit-image photos" in rec.eval_source and "chelsea" in rec.eval_source and rec.eval_samples == 16
    row = rec.rows[0]
    assert row.status == "ok" and row.top1_agreement is not None
    notes = load_artifact(row.artifact).manifest.notes + tuple(
        n for s in load_artifact(row.artifact).manifest.compression for n in s.get("notes", ()))
    assert not any(RANDOM_CALIBRATION_WARNING in n for n in notes)
