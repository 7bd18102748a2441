"""Lowering: capability table, manifest, the content-addressed cache and its integrity."""

from __future__ import annotations

import json
import os

import pytest

from edgeprobe.api import export
from edgeprobe.errors import ArtifactError, UnsupportedCombinationError
from edgeprobe.lower import capabilities, load_artifact
from edgeprobe_runner import vectors as epv


def test_capability_table_rejects_before_work():
    with pytest.raises(UnsupportedCombinationError, match="--format ptl does not support --backend xnnpack"):
        export("tiny_cnn", format="ptl", backend="xnnpack")
    with pytest.raises(UnsupportedCombinationError, match="QNN SDK"):
        export("model-that-would-fail-later", backend="qnn")
    with pytest.raises(UnsupportedCombinationError, match="unknown format"):
        capabilities.resolve("onnx")
    assert capabilities.resolve("pte").backend == "xnnpack"


def test_pte_manifest_and_vectors(tiny_pte):
    m = tiny_pte.manifest
    assert (m.target, m.backend, m.format) == ("executorch", "xnnpack", "pte")
    assert m.artifact_size_bytes == tiny_pte.model_path.stat().st_size > 0
    assert m.inputs[0].shape == (1, 3, 32, 32) and m.outputs[0].shape == (1, 10)
    assert m.planned_memory_bytes and all(b > 0 for b in m.planned_memory_bytes)
    assert m.tool_versions["executorch"] == "1.5.1" and m.tool_versions["torch"] == "2.14.1"
    assert tiny_pte.etrecord_path and tiny_pte.etrecord_path.is_file()
    sets = epv.read(str(tiny_pte.vectors_path))
    assert len(sets) == 1 and sets[0].expected[0].shape == (1, 10)
    on_disk = json.loads((tiny_pte.dir / "manifest.json").read_text())
    assert on_disk["artifact_sha256"] == m.artifact_sha256 and on_disk["schema_version"] == 1


def test_cache_hit_skips_lowering(tiny_pte):
    again = export("tiny_cnn")
    assert again.cached and again.dir == tiny_pte.dir
    assert export("tiny_cnn", input_shape=(1, 3, 16, 16)).dir != tiny_pte.dir


def test_damaged_cache_entry_is_rebuilt_not_served(isolated_cache):
    art = export("tiny_cnn", input_shape=(1, 3, 24, 24))
    data = art.model_path.read_bytes()
    art.model_path.write_bytes(data[: len(data) // 2])  # truncated, as after a crash mid-copy
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        load_artifact(art.dir)
    again = export("tiny_cnn", input_shape=(1, 3, 24, 24))
    assert not again.cached and again.model_path.read_bytes() == data
    # A temporary directory left by an interrupted export is never taken for an artifact.
    leftovers = [p for p in os.listdir(isolated_cache) if ".tmp-" in p]
    assert leftovers == []


def test_ptl_export_records_optimize_note():
    art = export("tiny_cnn", format="ptl")
    assert art.manifest.format == "ptl" and art.model_path.suffix == ".ptl"
    assert any("optimize_for_mobile" in n for n in art.manifest.notes)


def test_real_torchvision_export():
    art = export("mobilenet_v2")
    m = art.manifest
    assert m.artifact_size_bytes > 10_000_000  # 3.5 M fp32 parameters
    assert m.inputs[0].shape == (1, 3, 224, 224) and m.outputs[0].shape == (1, 1000)
