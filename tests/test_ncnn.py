"""ncnn as a peer runtime: a `.ncnn.tar` converted by pnnx from the same model, fp32, measured by the
Python runner on `local` and over TCP (`edgeprobe runner serve`), its own vectors checked, threads honoured."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch
from torch import nn

import edgeprobe
from edgeprobe.devices import default_runner, open_device
from edgeprobe.lower import Artifact, capabilities, load_artifact
from edgeprobe.results import BenchResult
from edgeprobe.session import MeasureConfig, measure
from edgeprobe_runner import vectors as epv
from farmkit import TOKEN, runner_server
from runtimekit import measure_with_tampered_vectors, usage_record

MEMBERS = ["model.ncnn.param", "model.ncnn.bin", "io.json"]


@pytest.fixture(scope="module")
def tiny_ncnn(isolated_cache) -> Artifact:
    return edgeprobe.export("tiny_cnn", format="ncnn")


def _members(art: Artifact) -> dict[str, bytes]:
    with tarfile.open(art.model_path) as tar:
        return {n: tar.extractfile(n).read() for n in tar.getnames()}


def _rewrite(art: Artifact, d, **changed: bytes) -> Artifact:
    """A copy of the artifact in ``d`` with some tar members replaced (the manifest kept: measure pushes as is)."""
    shutil.copytree(art.dir, d)
    members = {**_members(art), **changed}
    with tarfile.open(d / "model.ncnn.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Artifact(d, art.manifest)


def _check_ok(r: BenchResult, threads: int) -> None:
    import ncnn

    assert r.ok, r.run.error
    assert r.run.runner.flavor == "python" and r.run.runner.runtime == "ncnn"
    assert r.run.runner.runtime_version == ncnn.__version__
    assert r.run.verification.checked and r.run.verification.passed
    assert r.run.config.threads_requested == threads
    # --threads 0: ncnn's own default, what a fresh Option holds (its physical big-core count)
    assert r.run.config.threads_used == (threads or ncnn.Option().num_threads) and r.run.config.threads_used > 0


def test_capability_rows():
    row = capabilities.resolve("ncnn")
    assert (row.target, row.format, row.backend, row.supported) == ("ncnn", "ncnn", "cpu", True)
    assert capabilities.DEFAULT_BACKEND["ncnn"] == "cpu" and default_runner("ncnn") == "python"


def test_capability_row_without_the_extra(monkeypatch):
    monkeypatch.setattr(capabilities, "_missing", lambda module: module == "pnnx")
    row = next(c for c in capabilities.table() if c.format == "ncnn")
    assert not row.supported and "pip install edgeprobe[ncnn]" in row.reason
    with pytest.raises(edgeprobe.errors.UnsupportedCombinationError, match=r"pnnx.*edgeprobe\[ncnn\]"):
        edgeprobe.export("tiny_cnn", format="ncnn")


def test_manifest_vectors_and_cache_key(tiny_ncnn, tiny_pte, tmp_path):
    m = tiny_ncnn.manifest
    assert (m.format, m.target, m.backend, m.artifact_file) == ("ncnn", "ncnn", "cpu", "model.ncnn.tar")
    assert m.artifact_size_bytes == tiny_ncnn.model_path.stat().st_size > 0
    assert m.inputs == tiny_pte.manifest.inputs and m.outputs == tiny_pte.manifest.outputs
    assert m.rtol == 1e-3 and 0 < m.atol < 1e-3
    assert m.tool_versions["ncnn"] and m.tool_versions["pnnx"]
    assert m.cache_key != tiny_pte.manifest.cache_key
    assert load_artifact(tiny_ncnn.dir).manifest == m  # sha256s check out
    members = _members(tiny_ncnn)
    assert sorted(members) == sorted(MEMBERS)  # only what the runtime needs, none of pnnx's other files
    io_json = json.loads(members["io.json"])
    assert [(t["name"], t["dtype"], tuple(t["shape"])) for t in io_json["inputs"]] == [("in0", "float32", (1, 3, 32, 32))]
    assert [(t["name"], t["dtype"], tuple(t["shape"])) for t in io_json["outputs"]] == [("out0", "float32", (1, 10))]
    # fp32 weights: pnnx's default (fp16=1) would store 2 bytes for each of the convolutions' and linear's
    # weights and biases (batch norm folded into them), half of this
    module = edgeprobe.models.load_model("tiny_cnn").module
    weights = sum(p.numel() for mod in module.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))
                  for p in mod.parameters())
    assert len(members["model.ncnn.bin"]) >= 4 * weights
    assert any("fp16=0" in n for n in m.notes)
    sets = epv.read(str(tiny_ncnn.vectors_path))
    assert len(sets) == 1 and sets[0].expected[0].shape == (1, 10)
    again = edgeprobe.export("tiny_cnn", format="ncnn")
    assert again.cached and again.dir == tiny_ncnn.dir
    fresh = edgeprobe.export("tiny_cnn", format="ncnn", use_cache=False, out_dir=tmp_path / "fresh")
    assert fresh.manifest.artifact_sha256 == m.artifact_sha256  # the same conversion, the same tar


@pytest.mark.parametrize("threads", [1, 2, 0])
def test_bench_local(tiny_ncnn, threads):
    r = edgeprobe.bench(tiny_ncnn, device="local", threads=threads, iterations=5, warmup=1)
    _check_ok(r, threads)
    assert len(r.run.timing.iteration_ns) == 5 and r.manifest.format == "ncnn"
    assert BenchResult.from_json(r.to_json()) == r
    # fp32 forced: with ncnn's default options (fp16 storage where the CPU has F16C) tiny_cnn's
    # outputs differ by ~9e-5 of 0.36; in fp32 by ~1e-7
    expected = epv.read(str(tiny_ncnn.vectors_path))[0].expected[0]
    peak = torch.frombuffer(bytearray(expected.data), dtype=torch.float32).abs().max().item()
    assert r.run.verification.max_abs_error <= 1e-5 * peak


def test_bench_over_tcp(tiny_ncnn, tmp_path, native_runner):
    with runner_server(tmp_path / "tcpdev", native_runner) as server:
        r = edgeprobe.bench(tiny_ncnn, device=f"tcp:{server.where}", token=TOKEN, threads=2, iterations=3, warmup=1)
    _check_ok(r, 2)
    assert r.device.transport == "tcp"


def test_truncated_tar_is_a_load_error(tiny_ncnn, tmp_path):
    d = tmp_path / "trunc"
    shutil.copytree(tiny_ncnn.dir, d)
    data = (d / "model.ncnn.tar").read_bytes()
    (d / "model.ncnn.tar").write_bytes(data[: len(data) // 3])
    with open_device("local", runner="python") as dev:
        r = measure(dev, Artifact(d, tiny_ncnn.manifest), MeasureConfig(iterations=2))
    assert not r.ok and r.run.error.code == "load_failed" and "ncnn" in r.run.error.message
    assert r.run.runner.runtime == "ncnn" and r.run.timing is None


def test_short_bin_is_a_load_error(tiny_ncnn, tmp_path):
    """A whole tar whose .bin lacks weights the .param needs: ncnn's file reader says so (no read past the end)."""
    bin_ = _members(tiny_ncnn)["model.ncnn.bin"]
    art = _rewrite(tiny_ncnn, tmp_path / "short", **{"model.ncnn.bin": bin_[: len(bin_) // 2]})
    with open_device("local", runner="python") as dev:
        r = measure(dev, art, MeasureConfig(iterations=2))
    assert not r.ok and r.run.error.code == "load_failed" and ".bin is shorter" in r.run.error.message


def test_batch_above_one(tiny_ncnn, tmp_path):
    """ncnn's Mat has no batch dimension: refused at lowering, and by the runner for an io.json that asks."""
    with pytest.raises(edgeprobe.errors.LoweringError, match=r"shape \(2, 3, 32, 32\).*no batch dimension"):
        edgeprobe.export("tiny_cnn", format="ncnn", input_shape=(2, 3, 32, 32))
    meta = json.loads(_members(tiny_ncnn)["io.json"])
    meta["inputs"][0]["shape"][0] = 2
    art = _rewrite(tiny_ncnn, tmp_path / "batch2", **{"io.json": json.dumps(meta).encode()})
    with open_device("local", runner="python") as dev:
        r = measure(dev, art, MeasureConfig(iterations=2))
    assert not r.ok and r.run.error.code == "unsupported" and "batch 1 only" in r.run.error.message


class _Spectrum(nn.Module):
    def forward(self, x):
        return torch.fft.rfft(x).abs()


def test_a_model_pnnx_cannot_convert_is_a_lowering_error(isolated_cache):
    with pytest.raises(edgeprobe.errors.LoweringError, match=r"ncnn.*no ncnn layer for torch\.fft\.rfft"):
        edgeprobe.export(_Spectrum(), format="ncnn", example_inputs=(torch.randn(1, 8),))


def test_output_mismatch_is_caught(tiny_ncnn, tmp_path):
    r = measure_with_tampered_vectors(tiny_ncnn, tmp_path)
    assert not r.ok and r.run.error.code == "output_mismatch" and r.run.timing is None


def test_runner_without_vectors_uses_the_model_input_metadata(tiny_ncnn):
    """io.json's input shapes make inputs of ones, as a .pte's method metadata does."""
    p = subprocess.run([sys.executable, "-m", "edgeprobe_runner", "--model", str(tiny_ncnn.model_path),
                        "--iterations", "2", "--warmup", "0", "--threads", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["status"] == "ok" and rec["verification"]["checked"] is False
    assert rec["runner"]["runtime"] == "ncnn" and rec["config"]["threads_used"] == 1


def test_usage_record_names_ncnn(tmp_path):
    code, rec = usage_record(tmp_path, "m.ncnn.tar")
    assert code == 2
    assert rec["error"]["code"] == "usage" and rec["runner"]["runtime"] == "ncnn"
    assert rec["runner"]["runtime_version"]


def test_library_path_is_the_native_library():
    from edgeprobe_runner.backends import ncnn as backend

    path = backend.library_path()
    with open(path, "rb") as f:
        assert f.read(4) == b"\x7fELF"


def test_cli_accepts_format_ncnn(tiny_ncnn):
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "export", "tiny_cnn", "--format", "ncnn"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "model.ncnn.tar" in p.stdout and "ncnn/cpu" in p.stdout and "(cached)" in p.stdout


def test_feature_map_output_keeps_its_shape_and_values(isolated_cache):
    """A (1, 4, 5, 5) output: ncnn pads each channel of its Mat to 16 bytes (25 -> 28 floats); the runner
    gives the output back unpadded in the model's full shape, so the vectors' strict check passes."""
    conv = nn.Conv2d(3, 4, 3).eval()
    art = edgeprobe.export(conv, format="ncnn", example_inputs=(torch.randn(1, 3, 7, 7),))
    r = edgeprobe.bench(art, device="local", threads=1, iterations=2, warmup=0, min_seconds=0)
    assert r.ok, r.run.error
    assert art.manifest.outputs[0].shape == (1, 4, 5, 5) and r.run.verification.passed


@pytest.mark.parametrize("env, used, note", [({"OMP_DYNAMIC": "true"}, None, "OMP_DYNAMIC"),
                                             ({"OMP_THREAD_LIMIT": "1"}, 1, "OMP_THREAD_LIMIT=1")])
def test_threads_used_follows_openmp(tiny_ncnn, env, used, note):
    """ncnn's loops run on OpenMP: where OpenMP may shrink the team, threads_used says so, not the request."""
    import os

    p = subprocess.run([sys.executable, "-m", "edgeprobe_runner", "--model", str(tiny_ncnn.model_path),
                        "--iterations", "1", "--warmup", "0", "--threads", "2"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert p.returncode == 0, p.stderr
    config = json.loads(p.stdout)["config"]
    assert config["threads_used"] == used and note in config["threads_note"]
