"""The ``fp16`` recipe: XNNPACK runs tiny_cnn in half precision (checked in ETDump's operator names and in
the numbers, not by a flag), with fp32 inputs and outputs; measured on the real runners; refused where
no fp16 kernels exist; and ``edgeprobe sweep --recipes fp32,fp16`` scores and measures it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import edgeprobe
from edgeprobe import compress
from edgeprobe.errors import UnsupportedCombinationError
from edgeprobe.models import load_model


@pytest.fixture(scope="module")
def spec():
    return load_model("tiny_cnn")


@pytest.fixture(scope="module")
def fp16_art(spec, isolated_cache):
    comp, steps, art = compress.apply_and_lower(spec, "fp16", compress.Context(example_inputs=spec.example_inputs))
    assert comp.target_step == "fp16" and [s["recipe"] for s in steps] == ["fp16"]
    return art


def _etdump_op_names(pte, x, tmp_path) -> set[str]:
    """The operator names XNNPACK's profiler wrote into ETDump for one run of ``pte``."""
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    m = portable_lib._load_for_executorch(str(pte), enable_etdump=True)
    m.forward([x])
    path = tmp_path / "run.etdp"
    m.write_etdump_result_to_file(str(path))
    return {e.name for b in Inspector(etdump_path=str(path)).event_blocks for e in b.events}


def test_xnnpack_runs_the_convolutions_in_fp16(fp16_art, tiny_pte, spec, tmp_path):
    x = spec.example_inputs[0]
    half = _etdump_op_names(fp16_art.model_path, x, tmp_path)
    full = _etdump_op_names(tiny_pte.model_path, x, tmp_path)
    conv16 = {n for n in half if n.startswith("Convolution")}
    assert conv16 and all("F16" in n for n in conv16), sorted(half)
    assert any(n.startswith("Fully Connected (NC, F16)") for n in half), sorted(half)
    assert {n for n in full if n.startswith("Convolution")} and not any("F16" in n for n in full), sorted(full)


def test_fp32_at_the_edges_fp16_in_the_numbers(fp16_art, tiny_pte, spec):
    from executorch.runtime import Runtime

    m = fp16_art.manifest
    assert m.inputs == tiny_pte.manifest.inputs and m.outputs == tiny_pte.manifest.outputs  # float32 in and out
    assert m.recipe == "fp16" and m.cache_key != tiny_pte.manifest.cache_key
    assert any("half precision" in n for n in m.notes) and not any("fp16's smallest" in n for n in m.notes)
    x = torch.randn(4, *spec.example_inputs[0].shape[1:], generator=torch.Generator().manual_seed(1))
    outs = {}
    for name, art in (("fp16", fp16_art), ("fp32", tiny_pte)):
        method = Runtime.get().load_program(str(art.model_path)).load_method("forward")
        outs[name] = torch.cat([method.execute([x[i:i + 1]])[0].clone() for i in range(4)])
    ref = spec.module(x).detach()
    assert outs["fp16"].dtype == torch.float32
    err16, err32 = (outs["fp16"] - ref).abs().max().item(), (outs["fp32"] - ref).abs().max().item()
    scale = ref.abs().max().item()
    # fp16 (11-bit mantissa) rounds visibly more than fp32, yet stays close to it
    assert err16 > 10 * err32 and err16 > 1e-5 * scale, (err16, err32, scale)
    assert torch.nn.functional.cosine_similarity(outs["fp16"].flatten(), ref.flatten(), dim=0) > 0.999


@pytest.mark.parametrize("runner", ["native", "python"])
def test_bench_verifies_against_its_own_host_outputs(fp16_art, runner, request):
    if runner == "native":
        request.getfixturevalue("native_runner")
    r = edgeprobe.bench(fp16_art, device="local", runner=runner, threads=1, iterations=5, warmup=1, min_seconds=0)
    assert r.ok, r.run.error
    assert r.run.runner.flavor == runner and r.run.verification.checked and r.run.verification.passed
    assert len(r.run.timing.iteration_ns) >= 5


def test_fp16_only_where_xnnpack_has_it(spec):
    ctx = compress.Context(example_inputs=spec.example_inputs)
    with pytest.raises(UnsupportedCombinationError, match="--backend portable.*use --backend xnnpack"):
        compress.apply_and_lower(spec, "fp16", ctx, backend="portable")
    with pytest.raises(UnsupportedCombinationError, match="--format ptl does not have it; formats that have it: pte"):
        compress.apply_and_lower(spec, "fp16", ctx, format="ptl")
    with pytest.raises(Exception, match="must come last"):
        compress.parse("fp16+channel:0.3")


def test_sweep_fp32_fp16(tmp_path):
    out = tmp_path / "sweep"
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "sweep", "tiny_cnn", "--recipes", "fp32,fp16",
                        "--dataset", "random", "--iterations", "5", "--warmup", "1", "--min-seconds", "0",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {r["recipe"]: r for r in json.loads((out / "sweep.json").read_text())["rows"]}
    assert rows["fp16"]["status"] == "ok" and rows["fp16"]["verification_passed"] is True
    assert rows["fp16"]["latency_p50_ms"] > 0
    # scored on the artifact itself: fp16 rounding shows up against fp32's (a score of the eager model would be ~inf)
    assert 30 < rows["fp16"]["sqnr_db"] < rows["fp32"]["sqnr_db"] - 20, (rows["fp16"]["sqnr_db"], rows["fp32"]["sqnr_db"])
    assert rows["fp16"]["cosine"] > 0.999


def test_outputs_below_the_fp16_range_are_flagged(isolated_cache):
    """A randomly initialised torchvision model's logits can be ~1e-9 (MobileNetV2's are): fp16 flushes them to
    zero, so the artifact says why its fidelity is nil instead of leaving a bare SQNR of 0 dB."""
    from edgeprobe.models import ModelSpec

    tiny = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
    with torch.no_grad():
        tiny[0].weight.fill_(1e-9)
        tiny[0].bias.zero_()
    spec = ModelSpec(ref="tiny-logits", example_inputs=(torch.ones(1, 8),), module=tiny)
    _, _, art = compress.apply_and_lower(spec, "fp16", compress.Context(example_inputs=spec.example_inputs))
    assert any("below fp16's smallest normal number" in n and "8e-09" in n for n in art.manifest.notes), \
        art.manifest.notes
    from edgeprobe_runner import vectors as epv

    expected = epv.read(str(art.vectors_path))[0].expected[0]
    assert set(expected.data) == {0}  # the fp16 artifact's own outputs, as the device check expects them: zeros
