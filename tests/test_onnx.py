"""ONNX Runtime as a peer runtime: a `.onnx` lowered from the same model, measured by the Python
runner on `local` and over TCP (`edgeprobe runner serve`), its own vectors checked, threads honoured."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import edgeprobe
from edgeprobe.devices import default_runner, open_device
from edgeprobe.lower import Artifact, capabilities, load_artifact
from edgeprobe.results import BenchResult
from edgeprobe.session import MeasureConfig, measure
from edgeprobe_runner import vectors as epv
from farmkit import TOKEN, runner_server
from runtimekit import measure_with_tampered_vectors, usage_record


@pytest.fixture(scope="module")
def tiny_onnx(isolated_cache) -> Artifact:
    return edgeprobe.export("tiny_cnn", format="onnx")


def _check_ok(r: BenchResult, threads: int) -> None:
    assert r.ok, r.run.error
    assert r.run.runner.flavor == "python" and r.run.runner.runtime == "onnxruntime"
    assert r.run.runner.runtime_version and r.run.runner.runtime_version[0].isdigit()
    assert r.run.verification.checked and r.run.verification.passed
    assert r.run.config.threads_requested == threads
    if threads:
        assert r.run.config.threads_used == threads
    else:
        assert r.run.config.threads_used is None and "onnxruntime" in r.run.config.threads_note


def test_capability_rows():
    row = capabilities.resolve("onnx")
    assert (row.target, row.format, row.backend, row.supported) == ("onnxruntime", "onnx", "cpu", True)
    assert capabilities.DEFAULT_BACKEND["onnx"] == "cpu" and default_runner("onnx") == "python"
    assert any(c.format == "onnx" and c.supported for c in capabilities.table())


def test_capability_row_without_the_extra(monkeypatch):
    monkeypatch.setattr(capabilities, "_missing", lambda module: module == "onnxscript")
    row = next(c for c in capabilities.table() if c.format == "onnx")
    assert not row.supported and "pip install edgeprobe[onnx]" in row.reason
    with pytest.raises(edgeprobe.errors.UnsupportedCombinationError, match=r"onnxscript.*edgeprobe\[onnx\]"):
        edgeprobe.export("tiny_cnn", format="onnx")


def test_manifest_vectors_and_cache_key(tiny_onnx, tiny_pte):
    m = tiny_onnx.manifest
    assert (m.format, m.target, m.backend, m.artifact_file) == ("onnx", "onnxruntime", "cpu", "model.onnx")
    assert m.artifact_size_bytes == tiny_onnx.model_path.stat().st_size > 0
    assert m.inputs == tiny_pte.manifest.inputs and m.outputs == tiny_pte.manifest.outputs
    assert m.rtol == 1e-3 and 0 < m.atol < 1e-3
    assert m.tool_versions["onnxruntime"] and m.tool_versions["onnxscript"] and m.tool_versions["onnx"]
    assert m.cache_key != tiny_pte.manifest.cache_key
    assert load_artifact(tiny_onnx.dir).manifest == m  # sha256s check out
    sets = epv.read(str(tiny_onnx.vectors_path))
    assert len(sets) == 1 and sets[0].expected[0].shape == (1, 10)
    again = edgeprobe.export("tiny_cnn", format="onnx")
    assert again.cached and again.dir == tiny_onnx.dir


@pytest.mark.parametrize("threads", [1, 2, 0])
def test_bench_local(tiny_onnx, threads):
    r = edgeprobe.bench(tiny_onnx, device="local", threads=threads, iterations=5, warmup=1)
    _check_ok(r, threads)
    assert len(r.run.timing.iteration_ns) == 5 and r.manifest.format == "onnx"
    assert BenchResult.from_json(r.to_json()) == r  # threads_note survives the round trip


def test_bench_over_tcp(tiny_onnx, tmp_path, native_runner):
    with runner_server(tmp_path / "tcpdev", native_runner) as server:
        r = edgeprobe.bench(tiny_onnx, device=f"tcp:{server.where}", token=TOKEN, threads=2, iterations=3, warmup=1)
    _check_ok(r, 2)
    assert r.device.transport == "tcp"


def test_truncated_onnx_is_a_load_error(tiny_onnx, tmp_path):
    d = tmp_path / "trunc"
    shutil.copytree(tiny_onnx.dir, d)
    data = (d / "model.onnx").read_bytes()
    (d / "model.onnx").write_bytes(data[: len(data) // 3])
    with open_device("local", runner="python") as dev:
        r = measure(dev, Artifact(d, tiny_onnx.manifest), MeasureConfig(iterations=2))
    assert not r.ok and r.run.error.code == "load_failed" and "onnxruntime" in r.run.error.message
    assert r.run.runner.runtime == "onnxruntime" and r.run.timing is None


def test_output_mismatch_is_caught(tiny_onnx, tmp_path):
    r = measure_with_tampered_vectors(tiny_onnx, tmp_path)
    assert not r.ok and r.run.error.code == "output_mismatch" and r.run.timing is None


def test_runner_without_vectors_uses_the_model_input_metadata(tiny_onnx):
    """The session's own input shapes make inputs of ones, as a .pte's method metadata does."""
    p = subprocess.run([sys.executable, "-m", "edgeprobe_runner", "--model", str(tiny_onnx.model_path),
                        "--iterations", "2", "--warmup", "0", "--threads", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["status"] == "ok" and rec["verification"]["checked"] is False
    assert rec["runner"]["runtime"] == "onnxruntime" and rec["config"]["threads_used"] == 1


def test_usage_record_names_onnxruntime(tmp_path):
    code, rec = usage_record(tmp_path, "m.onnx")
    assert code == 2
    assert rec["error"]["code"] == "usage" and rec["runner"]["runtime"] == "onnxruntime"
    assert rec["runner"]["runtime_version"]


def test_cli_accepts_format_onnx(tiny_onnx):
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "export", "tiny_cnn", "--format", "onnx"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "model.onnx" in p.stdout and "onnxruntime/cpu" in p.stdout and "(cached)" in p.stdout


