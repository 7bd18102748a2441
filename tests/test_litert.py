"""LiteRT as a peer runtime: a `.tflite` converted by litert_torch in its own converter environment
(EDGEPROBE_LITERT_PYTHON, made by .ci/litert-env.sh), measured by the Python runner on ai_edge_litert's
interpreter (XNNPACK) on `local` and over TCP, its own vectors checked, threads counted.

The tests that convert are real-peer tests: without a converter environment they skip here and
fail under CI=true."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import edgeprobe
from edgeprobe.devices import default_runner, open_device
from edgeprobe.errors import LoweringError, UnsupportedCombinationError
from edgeprobe.lower import Artifact, capabilities, load_artifact
from edgeprobe.lower import litert as lower_litert
from edgeprobe.results import BenchResult
from edgeprobe.session import MeasureConfig, measure
from edgeprobe_runner import vectors as epv
from farmkit import TOKEN, runner_server
from runtimekit import measure_with_tampered_vectors, usage_record

converter = pytest.mark.real_peer("litert-converter")


def _need_converter() -> None:
    why = lower_litert.converter_missing()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def tiny_tflite(isolated_cache) -> Artifact:
    _need_converter()
    return edgeprobe.export("tiny_cnn", format="tflite")


def _check_ok(r: BenchResult, threads: int) -> None:
    import ai_edge_litert

    assert r.ok, r.run.error
    assert r.run.runner.flavor == "python" and r.run.runner.runtime == "litert"
    assert r.run.runner.runtime_version == ai_edge_litert.__version__
    # the library that holds the interpreter and XNNPACK, as the runner process mapped it, with its compilers
    assert r.run.runner.build is not None and r.run.runner.build.library == "libpywrap_litert_common.so"
    assert r.run.runner.build.compilers and r.run.runner.build_reason is None
    assert r.run.verification.checked and r.run.verification.passed
    assert r.run.config.threads_requested == threads
    # counted from the threads the interpreter started: N - 1 XNNPACK workers plus the caller; with
    # num_threads unset (--threads 0) LiteRT's default makes no pool
    assert r.run.config.threads_used == (threads or 1)
    assert (r.run.config.threads_note is None) == (threads != 0)


@converter
def test_capability_rows(tiny_tflite):
    row = capabilities.resolve("tflite")
    assert (row.target, row.format, row.backend, row.supported) == ("litert", "tflite", "xnnpack", True)
    assert capabilities.DEFAULT_BACKEND["tflite"] == "xnnpack" and default_runner("tflite") == "python"


def test_row_without_a_converter_env_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.delenv(lower_litert.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no converter env at the default place either
    row = next(c for c in capabilities.table() if c.format == "tflite")
    assert not row.supported and "no LiteRT converter environment" in row.reason
    assert "bash .ci/litert-env.sh" in row.reason and f"export {lower_litert.ENV_VAR}=" in row.reason
    assert str(tmp_path / "edgeprobe" / "litert-env" / "bin" / "python") in row.reason
    with pytest.raises(UnsupportedCombinationError, match=r"litert-env\.sh"):
        edgeprobe.export("tiny_cnn", format="tflite")
    monkeypatch.setenv(lower_litert.ENV_VAR, str(tmp_path / "nowhere" / "python"))
    row = next(c for c in capabilities.table() if c.format == "tflite")
    assert not row.supported and "nowhere/python is not an executable python" in row.reason


def test_the_default_place_is_found_without_the_variable(monkeypatch, tmp_path):
    """.ci/litert-env.sh makes the env under the user cache by default; edgeprobe looks there."""
    monkeypatch.delenv(lower_litert.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    python = tmp_path / "edgeprobe" / "litert-env" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho '{\"litert-torch\": \"0.10.0\", \"torch\": \"2.14.1\"}'\n")  # its --versions
    python.chmod(0o755)
    lower_litert._versions_of.cache_clear()
    assert lower_litert.converter_python() == str(python) and lower_litert.converter_missing() is None
    assert next(c for c in capabilities.table() if c.format == "tflite").supported


def test_a_converter_env_whose_borrowed_torch_is_gone_says_make_it_again(monkeypatch, tmp_path):
    """.ci/litert-env.sh links the project venv's torch; once that venv is deleted the env imports no torch.
    Its row said "supported" and every conversion failed with "No module named 'torch'" (and a crash in
    the error message's own hint, a None version split)."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho '{\"litert-torch\": \"0.10.0\", \"torch\": null}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv(lower_litert.ENV_VAR, str(fake))
    lower_litert._versions_of.cache_clear()
    row = next(c for c in capabilities.table() if c.format == "tflite")
    assert not row.supported and "cannot import torch" in row.reason and "litert-env.sh" in row.reason
    assert "the converter environment has torch ?" in lower_litert._torch_differs()  # no crash on a missing version
    lower_litert._versions_of.cache_clear()


def test_capability_row_without_the_runtime(monkeypatch):
    monkeypatch.setattr(capabilities, "_missing", lambda module: module == "ai_edge_litert")
    row = next(c for c in capabilities.table() if c.format == "tflite")
    assert not row.supported and "pip install edgeprobe[litert]" in row.reason


@converter
def test_manifest_vectors_and_cache_key(tiny_tflite, tiny_pte):
    m = tiny_tflite.manifest
    assert (m.format, m.target, m.backend, m.artifact_file) == ("tflite", "litert", "xnnpack", "model.tflite")
    assert m.artifact_size_bytes == tiny_tflite.model_path.stat().st_size > 0
    assert tiny_tflite.model_path.read_bytes()[4:8] == b"TFL3"  # the flatbuffer's file identifier
    assert m.inputs == tiny_pte.manifest.inputs and m.outputs == tiny_pte.manifest.outputs
    assert m.rtol == 1e-3 and 0 < m.atol < 1e-3
    assert m.tool_versions["ai-edge-litert"] and m.tool_versions["converter:litert-torch"][0].isdigit()
    assert m.tool_versions["converter:torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert any("litert_torch.convert" in n for n in m.notes)
    assert m.cache_key != tiny_pte.manifest.cache_key
    assert load_artifact(tiny_tflite.dir).manifest == m  # sha256s check out
    sets = epv.read(str(tiny_tflite.vectors_path))
    assert len(sets) == 1 and sets[0].expected[0].shape == (1, 10)
    again = edgeprobe.export("tiny_cnn", format="tflite")
    assert again.cached and again.dir == tiny_tflite.dir


@converter
@pytest.mark.parametrize("threads", [1, 2, 0])
def test_bench_local(tiny_tflite, threads):
    r = edgeprobe.bench(tiny_tflite, device="local", threads=threads, iterations=5, warmup=1)
    _check_ok(r, threads)
    assert len(r.run.timing.iteration_ns) == 5 and r.manifest.format == "tflite"
    assert BenchResult.from_json(r.to_json()) == r


@converter
def test_a_tflite_artifact_is_benched_without_a_converter_env(tiny_tflite, monkeypatch, tmp_path):
    monkeypatch.setenv(lower_litert.ENV_VAR, str(tmp_path / "gone" / "python"))
    assert not next(c for c in capabilities.table() if c.format == "tflite").supported
    r = edgeprobe.bench(str(tiny_tflite.dir), device="local", threads=1, iterations=2, warmup=0)
    _check_ok(r, 1)


@converter
def test_bench_over_tcp(tiny_tflite, tmp_path, native_runner):
    with runner_server(tmp_path / "tcpdev", native_runner) as server:
        r = edgeprobe.bench(tiny_tflite, device=f"tcp:{server.where}", token=TOKEN, threads=2, iterations=3, warmup=1)
    _check_ok(r, 2)
    assert r.device.transport == "tcp"


@converter
def test_truncated_tflite_is_a_load_error(tiny_tflite, tmp_path):
    d = tmp_path / "trunc"
    shutil.copytree(tiny_tflite.dir, d)
    data = (d / "model.tflite").read_bytes()
    (d / "model.tflite").write_bytes(data[: len(data) // 3])
    with open_device("local", runner="python") as dev:
        r = measure(dev, Artifact(d, tiny_tflite.manifest), MeasureConfig(iterations=2))
    assert not r.ok and r.run.error.code == "load_failed" and "LiteRT" in r.run.error.message
    assert r.run.runner.runtime == "litert" and r.run.timing is None


@converter
def test_output_mismatch_is_caught(tiny_tflite, tmp_path):
    r = measure_with_tampered_vectors(tiny_tflite, tmp_path)
    assert not r.ok and r.run.error.code == "output_mismatch" and r.run.timing is None


@converter
def test_runner_without_vectors_uses_the_model_input_metadata(tiny_tflite):
    """The interpreter's own input details make inputs of ones, as a .pte's method metadata does."""
    p = subprocess.run([sys.executable, "-m", "edgeprobe_runner", "--model", str(tiny_tflite.model_path),
                        "--iterations", "2", "--warmup", "0", "--threads", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["status"] == "ok" and rec["verification"]["checked"] is False
    assert rec["runner"]["runtime"] == "litert" and rec["config"]["threads_used"] == 2


def test_usage_record_names_litert(tmp_path):
    code, rec = usage_record(tmp_path, "m.tflite")
    assert code == 2
    assert rec["error"]["code"] == "usage" and rec["runner"]["runtime"] == "litert"
    assert rec["runner"]["runtime_version"]


def test_library_path_is_the_native_library():
    from edgeprobe_runner.backends import litert as backend

    with open(backend.library_path(), "rb") as f:
        assert f.read(4) == b"\x7fELF"


class _TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, a, b):
        return self.fc(a) * 2 + b[:, :4], b.sum(1, keepdim=True) - a.mean(1, keepdim=True)


@converter
def test_inputs_and_outputs_keep_the_torch_signature_order(isolated_cache):
    """Two inputs of different shapes and two outputs: fed and read back in the torch order (vectors pass)."""
    _need_converter()
    art = edgeprobe.export(_TwoInTwoOut().eval(), format="tflite", example_inputs=(torch.randn(2, 8), torch.randn(2, 6)))
    r = edgeprobe.bench(art, device="local", threads=1, iterations=2, warmup=0)
    _check_ok(r, 1)
    assert [o.shape for o in art.manifest.outputs] == [(2, 4), (2, 1)]


class _Bessel(nn.Module):
    """torch.export takes it; litert_torch has no lowering for aten.special_bessel_j0."""

    def forward(self, x):
        return torch.special.bessel_j0(x)


@converter
def test_a_model_the_converter_cannot_take_is_a_lowering_error_with_its_message(isolated_cache):
    _need_converter()
    with pytest.raises(LoweringError, match=r"litert_torch\.convert.*Lowering not found: aten\.special_bessel_j0"):
        edgeprobe.export(_Bessel().eval(), format="tflite", example_inputs=(torch.randn(1, 8),))


class _Cumsum(nn.Module):
    """Converts to one CUMSUM, an operator XNNPACK does not take."""

    def forward(self, x):
        return torch.cumsum(x, 1)


@converter
def test_a_model_xnnpack_takes_none_of_is_unsupported_not_measured_on_other_kernels(isolated_cache):
    _need_converter()
    art = edgeprobe.export(_Cumsum().eval(), format="tflite", example_inputs=(torch.randn(1, 8),))
    r = edgeprobe.bench(art, device="local", threads=1, iterations=2, warmup=0)
    assert not r.ok and r.run.error.code == "unsupported" and "no XNNPACK delegate" in r.run.error.message
    assert r.run.timing is None


def test_a_converter_that_dies_is_a_lowering_error(isolated_cache, monkeypatch, tmp_path):
    """A converter python that exits without a result: its last words are in the error."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'litert_torch: out of cheese' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv(lower_litert.ENV_VAR, str(fake))
    lower_litert._versions_of.cache_clear()
    with pytest.raises(LoweringError, match=r"exited 3 without a result: litert_torch: out of cheese"):
        edgeprobe.export("tiny_cnn", format="tflite", use_cache=False)


@converter
def test_cli_accepts_format_tflite(tiny_tflite):
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "export", "tiny_cnn", "--format", "tflite"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "model.tflite" in p.stdout and "litert/xnnpack" in p.stdout and "(cached)" in p.stdout
