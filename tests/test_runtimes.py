"""The runtime registry: one row per runtime in the capability table, the Python runner's backends and
the CLI's formats, kept in agreement (each is read without importing the others' heavy packages)."""

from __future__ import annotations

from edgeprobe.cli import parse
from edgeprobe.lower import TARGET_MODULES, capabilities
from edgeprobe_runner import backends


def test_cli_formats_are_the_capability_tables():
    assert tuple(sorted(parse.FORMATS)) == capabilities.FORMATS


def test_every_target_has_a_lowering_module_and_every_format_a_runner_backend():
    runtimes = {b.runtime for b in backends.BACKENDS}
    for cap in capabilities.TABLE:
        assert cap.target in TARGET_MODULES, cap
        if cap.supported:
            assert cap.target in runtimes, f"{cap.target} has no Python runner backend"


def test_backend_chosen_by_suffix():
    assert backends.for_path("/d/model.ov.tar").runtime == "openvino"
    assert backends.for_path("/d/model.ncnn.tar").runtime == "ncnn"
    assert backends.for_path("m.onnx").runtime == "onnxruntime"
    assert backends.for_path("m.tflite").runtime == "litert"
    assert backends.for_path("m.ptl").runtime == "torchscript_lite"
    assert backends.for_path("m.pte").runtime == "executorch"
    assert backends.for_path("m.bin").runtime == "executorch"  # the native runner's own format by default
