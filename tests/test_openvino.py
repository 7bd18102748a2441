"""OpenVINO as a peer runtime: a `.ov.tar` (IR xml + bin) lowered from the same model, fp32 and NNCF
int8, measured by the Python runner on `local` and over TCP (`edgeprobe runner serve`), its own
vectors checked, threads honoured and read back, f32 precision kept on bf16-capable CPUs."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap

import pytest
import torch

import edgeprobe
from edgeprobe import compress
from edgeprobe.compress.quantize import RANDOM_CALIBRATION_WARNING
from edgeprobe.devices import default_runner, open_device
from edgeprobe.lower import Artifact, capabilities, load_artifact
from edgeprobe.models import load_model
from edgeprobe.results import BenchResult
from edgeprobe.session import MeasureConfig, measure
from edgeprobe_runner import vectors as epv
from edgeprobe_runner.backends import openvino as ov_backend
from farmkit import TOKEN, runner_server
from runtimekit import measure_with_tampered_vectors, usage_record


@pytest.fixture(scope="module")
def tiny_ov(isolated_cache) -> Artifact:
    return edgeprobe.export("tiny_cnn", format="openvino")


@pytest.fixture(scope="module")
def tiny_spec():
    return load_model("tiny_cnn")


def _calibration(seed: int, n: int = 16) -> compress.Dataset:
    return compress.Dataset(torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture(scope="module")
def tiny_int8(tiny_spec) -> Artifact:
    ctx = compress.Context(tiny_spec.example_inputs, calibration=_calibration(0))
    _comp, _steps, art = compress.apply_and_lower(tiny_spec, "int8", ctx, format="openvino")
    return art


def _check_ok(r: BenchResult, threads: int) -> None:
    assert r.ok, r.run.error
    assert r.run.runner.flavor == "python" and r.run.runner.runtime == "openvino"
    assert r.run.runner.runtime_version and r.run.runner.runtime_version[0].isdigit()
    assert r.run.verification.checked and r.run.verification.passed
    assert r.run.config.threads_requested == threads
    if threads:
        assert r.run.config.threads_used == threads
    else:  # OpenVINO's own choice, read back from the compiled model
        assert 1 <= r.run.config.threads_used <= len(os.sched_getaffinity(0))
    assert r.run.config.threads_note is None


def _runtime_precisions(compiled) -> dict[str, set[str]]:
    """Layer type -> the precisions the CPU plugin runs it in (the compiled model's runtime graph)."""
    out: dict[str, set[str]] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        out.setdefault(info["layerType"].astype(str), set()).add(info["runtimePrecision"].astype(str))
    return out


def test_capability_rows():
    row = capabilities.resolve("openvino")
    assert (row.target, row.format, row.backend, row.supported) == ("openvino", "openvino", "cpu", True)
    assert capabilities.DEFAULT_BACKEND["openvino"] == "cpu" and default_runner("openvino") == "python"
    assert any(c.format == "openvino" and c.supported for c in capabilities.table())
    assert "int8" in edgeprobe.lower.target_recipes("openvino")


def test_capability_row_without_the_extra(monkeypatch):
    monkeypatch.setattr(capabilities, "_missing", lambda module: module == "nncf")
    row = next(c for c in capabilities.table() if c.format == "openvino")
    assert not row.supported and "pip install edgeprobe[openvino]" in row.reason
    with pytest.raises(edgeprobe.errors.UnsupportedCombinationError, match=r"nncf.*edgeprobe\[openvino\]"):
        edgeprobe.export("tiny_cnn", format="openvino")


def test_manifest_vectors_and_cache_key(tiny_ov, tiny_pte):
    m = tiny_ov.manifest
    assert (m.format, m.target, m.backend, m.artifact_file) == ("openvino", "openvino", "cpu", "model.ov.tar")
    assert m.artifact_size_bytes == tiny_ov.model_path.stat().st_size > 0
    assert m.inputs == tiny_pte.manifest.inputs and m.outputs == tiny_pte.manifest.outputs
    assert m.rtol == 1e-3 and 0 < m.atol < 1e-3
    assert m.tool_versions["openvino"] and m.tool_versions["nncf"]
    assert m.cache_key != tiny_pte.manifest.cache_key
    assert load_artifact(tiny_ov.dir).manifest == m  # sha256s check out
    with tarfile.open(tiny_ov.model_path, "r:") as tar:  # uncompressed, the IR's two files and nothing else
        members = tar.getmembers()
        assert [t.name for t in members] == ["model.xml", "model.bin"] and all(t.isfile() for t in members)
        assert tar.extractfile("model.xml").read().startswith(b"<?xml") and members[1].size > 0
        assert all(t.mtime == 0 and t.uid == 0 and t.uname == "" for t in members)
    sets = epv.read(str(tiny_ov.vectors_path))
    assert len(sets) == 1 and sets[0].expected[0].shape == (1, 10)
    again = edgeprobe.export("tiny_cnn", format="openvino")
    assert again.cached and again.dir == tiny_ov.dir


@pytest.mark.parametrize("threads", [1, 2, 0])
def test_bench_local(tiny_ov, threads):
    r = edgeprobe.bench(tiny_ov, device="local", threads=threads, iterations=5, warmup=1)
    _check_ok(r, threads)
    assert len(r.run.timing.iteration_ns) == 5 and r.manifest.format == "openvino"
    assert r.run.verification.max_abs_error < 1e-4
    assert BenchResult.from_json(r.to_json()) == r


_BUSY_THREADS = textwrap.dedent("""
    import os, sys, json, time, torch
    from edgeprobe_runner.backends import openvino as b
    def ticks():
        out = {}
        for t in os.listdir("/proc/self/task"):
            try:
                f = open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[t] = int(f[11]) + int(f[12])  # utime + stime
        return out
    loaded = b.load(sys.argv[1], "forward", int(sys.argv[2]))
    x = [torch.ones(loaded.input_specs[0][1])]
    for _ in range(3):
        loaded.run(x)
    before, end = ticks(), time.monotonic() + float(sys.argv[3])
    while time.monotonic() < end:
        loaded.run(x)
    after = ticks()
    busy = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
    print(json.dumps({"threads_used": loaded.threads_used, "busy": busy}))
""")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell 1 thread from 2")
def test_threads_used_is_the_number_of_threads_that_run(tmp_path):
    """threads_used comes from the compiled model; the threads that burn CPU time in /proc say the same.
    --threads 0 on one allowed CPU: OpenVINO's default follows the affinity, and says 1."""
    art = edgeprobe.export("tiny_cnn", format="openvino", input_shape=(1, 3, 192, 192), out_dir=tmp_path / "big")
    one_cpu = min(os.sched_getaffinity(0))
    for threads, cpus, expected in ((1, None, 1), (2, None, 2), (0, {one_cpu}, 1)):
        p = subprocess.run([sys.executable, "-c", _BUSY_THREADS, str(art.model_path), str(threads), "1.5"],
                           capture_output=True, text=True, timeout=120,
                           preexec_fn=(lambda c=cpus: os.sched_setaffinity(0, c)) if cpus else None)
        assert p.returncode == 0, p.stderr
        rec = json.loads(p.stdout)
        busy = [b for b in rec["busy"] if b >= max(5, rec["busy"][0] // 4)]  # >= 25 % of the busiest thread's ticks
        assert rec["threads_used"] == expected and len(busy) == expected, (threads, cpus, rec)


def test_fp32_runs_in_f32(tiny_ov):
    """INFERENCE_PRECISION_HINT f32: no layer runs in bf16/f16, even where the CPU has bf16 (OpenVINO's
    default there is bf16, which the record would call fp32)."""
    compiled, _weights = ov_backend.compile_file(str(tiny_ov.model_path), 1)
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    used = set().union(*_runtime_precisions(compiled).values())
    assert not used & {"bf16", "f16"}, used


def test_bench_over_tcp(tiny_ov, tmp_path, native_runner):
    with runner_server(tmp_path / "tcpdev", native_runner) as server:
        r = edgeprobe.bench(tiny_ov, device=f"tcp:{server.where}", token=TOKEN, threads=2, iterations=3, warmup=1)
    _check_ok(r, 2)
    assert r.device.transport == "tcp"


@pytest.mark.parametrize("damage", ["truncated", "bad_xml", "no_bin"])
def test_damaged_model_is_a_load_error(tiny_ov, tmp_path, damage):
    d = tmp_path / damage
    shutil.copytree(tiny_ov.dir, d)
    path = d / "model.ov.tar"
    if damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    else:
        with tarfile.open(tiny_ov.model_path) as src:
            members = {t.name: src.extractfile(t).read() for t in src.getmembers()}
        if damage == "bad_xml":
            members["model.xml"] = members["model.xml"][: len(members["model.xml"]) // 2]
        else:
            del members["model.bin"]
        path.unlink()
        with tarfile.open(path, "w") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with open_device("local", runner="python") as dev:
        r = measure(dev, Artifact(d, tiny_ov.manifest), MeasureConfig(iterations=2))
    assert not r.ok and r.run.error.code == "load_failed" and "openvino" in r.run.error.message
    assert r.run.runner.runtime == "openvino" and r.run.timing is None


def test_output_mismatch_is_caught(tiny_ov, tmp_path):
    r = measure_with_tampered_vectors(tiny_ov, tmp_path)
    assert not r.ok and r.run.error.code == "output_mismatch" and r.run.timing is None


def test_runner_without_vectors_uses_the_model_input_metadata(tiny_ov):
    """The compiled model's static input shapes make inputs of ones, as a .pte's method metadata does."""
    p = subprocess.run([sys.executable, "-m", "edgeprobe_runner", "--model", str(tiny_ov.model_path),
                        "--iterations", "2", "--warmup", "0", "--threads", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["status"] == "ok" and rec["verification"]["checked"] is False
    assert rec["runner"]["runtime"] == "openvino" and rec["config"]["threads_used"] == 1
    build = rec["runner"]["build"]  # the compiler of the libopenvino.so this runner mapped
    assert build["library"].startswith("libopenvino.so") and build["compilers"], rec["runner"]


def test_usage_record_names_openvino(tmp_path):
    code, rec = usage_record(tmp_path, "m.ov.tar")
    assert code == 2
    assert rec["error"]["code"] == "usage" and rec["runner"]["runtime"] == "openvino"
    assert rec["runner"]["runtime_version"] == ov_backend.import_runtime()  # the same name in both records


def test_library_path_is_the_core_library():
    import openvino  # noqa: F401 - mapped into this process

    path = ov_backend.library_path()
    assert path and os.path.basename(path).startswith("libopenvino.so") and os.path.isfile(path)
    with open(path, "rb") as f:
        assert f.read(4) == b"\x7fELF"


def test_cli_accepts_format_openvino(tiny_ov):
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "export", "tiny_cnn", "--format", "openvino"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "model.ov.tar" in p.stdout and "openvino/cpu" in p.stdout and "(cached)" in p.stdout


# --- int8 through NNCF ---------------------------------------------------------------------------


def test_int8_manifest_and_runtime_precision(tiny_int8, tiny_ov):
    m = tiny_int8.manifest
    assert (m.format, m.artifact_file) == ("openvino", "model.ov.tar") and m.recipe.startswith("int8")
    assert m.rtol == 0.05 and any("NNCF" in n and "16 calibration samples (given)" in n for n in m.notes)
    assert not any(RANDOM_CALIBRATION_WARNING in n for n in m.notes)
    assert m.cache_key != tiny_ov.manifest.cache_key
    compiled, _weights = ov_backend.compile_file(str(tiny_int8.model_path), 1)
    layers = _runtime_precisions(compiled)
    assert layers["Convolution"] <= {"u8", "i8"}, layers  # NNCF's int8 reached the CPU plugin's kernels
    used = set().union(*layers.values())
    assert not used & {"bf16", "f16"}, used  # what stayed floating point runs in f32
    with tarfile.open(tiny_int8.model_path) as q, tarfile.open(tiny_ov.model_path) as f:
        assert q.getmember("model.bin").size < f.getmember("model.bin").size / 2  # int8 weights in the bin


@pytest.mark.parametrize("threads", [1, 2])
def test_int8_bench_local(tiny_int8, threads):
    r = edgeprobe.bench(tiny_int8, device="local", threads=threads, iterations=5, warmup=1)
    _check_ok(r, threads)
    assert r.run.verification.rtol == 0.05


def test_int8_cache_key_follows_calibration_and_samples(tiny_spec, tiny_int8):
    other = compress.apply_and_lower(tiny_spec, "int8", compress.Context(tiny_spec.example_inputs,
                                     calibration=_calibration(1)), format="openvino")[2]
    assert other.manifest.cache_key != tiny_int8.manifest.cache_key and other.dir != tiny_int8.dir
    fewer = compress.apply_and_lower(tiny_spec, "int8:samples=4", compress.Context(tiny_spec.example_inputs,
                                     calibration=_calibration(0)), format="openvino")[2]
    assert fewer.manifest.cache_key != tiny_int8.manifest.cache_key
    assert any("on 4 calibration samples (given)" in n for n in fewer.manifest.notes)
    same = compress.apply_and_lower(tiny_spec, "int8", compress.Context(tiny_spec.example_inputs,
                                    calibration=_calibration(0)), format="openvino")[2]
    assert same.cached and same.dir == tiny_int8.dir


def test_int8_without_calibration_warns(tiny_spec):
    logs: list[str] = []
    art = compress.apply_and_lower(tiny_spec, "int8", compress.Context(tiny_spec.example_inputs, log=logs.append),
                                   format="openvino")[2]
    assert any(RANDOM_CALIBRATION_WARNING in n for n in art.manifest.notes)
    assert any(RANDOM_CALIBRATION_WARNING in m for m in logs)
    assert any("(random)" in n for n in art.manifest.notes)


def test_int8_calibration_of_the_wrong_shape_is_refused(tiny_spec):
    bad = compress.Dataset(torch.rand(4, 3, 16, 16))
    with pytest.raises(edgeprobe.errors.UsageError, match="shape"):
        compress.apply_and_lower(tiny_spec, "int8", compress.Context(tiny_spec.example_inputs, calibration=bad),
                                 format="openvino")


def test_int8_all_zero_outputs_are_said(tiny_int8):
    """A check against all-zero outputs passes for any device that also gives zeros: the manifest says so."""
    conv = torch.nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.bias.fill_(-1e3)  # ReLU of a very negative pre-activation: zero for any input in [0, 1]
    spec = load_model(torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten()),
                      example_inputs=(torch.rand(1, 3, 8, 8),))
    ctx = compress.Context(spec.example_inputs, calibration=compress.Dataset(torch.rand(8, 3, 8, 8)))
    art = compress.apply_and_lower(spec, "int8", ctx, format="openvino")[2]
    assert any("outputs on the example inputs are all zero" in n for n in art.manifest.notes)
    assert not any("all zero" in n for n in tiny_int8.manifest.notes)


def test_a_model_the_converter_cannot_take_says_which_operator():
    class Bessel(torch.nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x)  # no OpenVINO conversion rule

    with pytest.raises(edgeprobe.errors.LoweringError,
                       match=r"lowering Bessel failed in OpConversionFailure: .*aten\.special_bessel_j0"):
        edgeprobe.export(Bessel(), format="openvino", example_inputs=(torch.rand(1, 4, 4),))


def _weight_scale_shapes(art: Artifact) -> list[tuple[int, ...]]:
    """The shapes of the scales that dequantize the int8 weights (Convert(i8 constant) * scale) in the IR."""
    import numpy as np
    import openvino as ov

    xml, weights = ov_backend.read_members(str(art.model_path))
    model = ov.Core().read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))
    shapes = []
    for op in model.get_ops():
        src = op.input_value(0).get_node() if op.get_type_name() == "Multiply" else None
        if src is not None and src.get_type_name() == "Convert" and \
                src.input_value(0).get_node().get_element_type().get_type_name() == "i8":
            shapes.append(tuple(op.input_value(1).get_partial_shape().to_shape()))
    return shapes


def test_int8_per_channel_parameter_reaches_nncf(tiny_spec, tiny_int8):
    per_channel = _weight_scale_shapes(tiny_int8)
    assert len(per_channel) == 3 and all(s and s[0] > 1 for s in per_channel)  # one scale per output channel
    ctx = compress.Context(tiny_spec.example_inputs, calibration=_calibration(0))
    per_tensor = compress.apply_and_lower(tiny_spec, "int8:per_channel=false", ctx, format="openvino")[2]
    assert any("per-tensor weights" in n for n in per_tensor.manifest.notes)
    assert len(_weight_scale_shapes(per_tensor)) == 3 and all(s == () for s in _weight_scale_shapes(per_tensor))
