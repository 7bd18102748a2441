"""Lowering: capability table, manifest, the content-addressed cache and its integrity."""

from __future__ import annotations

import json

import pytest

from edgeprobe.api import export
from edgeprobe.errors import ArtifactError, UnsupportedCombinationError, UsageError
from edgeprobe.lower import capabilities, load_artifact
from edgeprobe_runner import vectors as epv


def test_capability_table_rejects_before_work():
    with pytest.raises(UnsupportedCombinationError, match="--format ptl does not support --backend xnnpack"):
        export("tiny_cnn", format="ptl", backend="xnnpack")
    with pytest.raises(UnsupportedCombinationError, match="QNN SDK"):
        export("model-that-would-fail-later", backend="qnn")
    with pytest.raises(UnsupportedCombinationError, match="unknown format"):
        capabilities.resolve("no-such-format")
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
    # An export interrupted at each write point (kill -9) is tests/test_faults.py's job.


def test_ptl_export_records_optimize_note():
    art = export("tiny_cnn", format="ptl")
    assert art.manifest.format == "ptl" and art.model_path.suffix == ".ptl"
    assert any("optimize_for_mobile" in n for n in art.manifest.notes)


def test_real_torchvision_export():
    art = export("mobilenet_v2")
    m = art.manifest
    assert m.artifact_size_bytes > 10_000_000  # 3.5 M fp32 parameters
    assert m.inputs[0].shape == (1, 3, 224, 224) and m.outputs[0].shape == (1, 1000)


def test_out_dot_refuses_and_keeps_the_working_directory(tmp_path):
    """`edgeprobe export --out .` deleted the working directory (shutil.rmtree of whatever --out named)."""
    import subprocess
    import sys

    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the user's data")
    proc = subprocess.run([sys.executable, "-m", "edgeprobe", "export", "tiny_cnn", "--out", "."], cwd=work,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "current directory" in proc.stdout + proc.stderr
    assert (work / "notes.txt").read_text() == "the user's data"


def test_out_dir_that_is_not_an_artifact_is_refused_untouched(tmp_path):
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    (user / "sub" / "data.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(UsageError, match="not an edgeprobe artifact.*new or empty directory"):
        export("tiny_cnn", out_dir=user)
    assert sorted(p.name for p in user.rglob("*")) == ["data.bin", "sub"]
    broken = tmp_path / "broken"  # a manifest that does not parse is no artifact either
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(UsageError, match="not an edgeprobe artifact"):
        export("tiny_cnn", out_dir=broken)
    assert (broken / "manifest.json").read_text() == "{not json"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        export("tiny_cnn", out_dir=tmp_path / "afile")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export("tiny_cnn", out_dir=empty).manifest.model_ref == "tiny_cnn"


def test_out_dir_holding_another_model_is_replaced_not_served(tmp_path):
    """`export B --out art` after `export A --out art` returned A: the manifest's cache_key was not compared."""
    art = tmp_path / "art"
    first = export("tiny_cnn", out_dir=art)
    assert not first.cached and first.manifest.model_ref == "tiny_cnn"
    again = export("tiny_cnn", out_dir=art)
    assert again.cached and again.manifest.cache_key == first.manifest.cache_key
    other = export("digits_cnn", out_dir=art)
    assert not other.cached and other.manifest.model_ref == "digits_cnn"
    assert other.manifest.cache_key != first.manifest.cache_key
    on_disk = load_artifact(art)
    assert on_disk.manifest.model_ref == "digits_cnn" and on_disk.manifest.inputs[0].shape == (1, 1, 8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary or old copy left beside it


def test_cache_entry_with_another_key_is_not_served(isolated_cache):
    """A cache entry is served only when its manifest's cache_key is the requested one."""
    from edgeprobe.lower import cache_key, capabilities as caps
    from edgeprobe.models import load_model

    spec = load_model("tiny_cnn", input_shape=(1, 3, 20, 20))
    key = cache_key(spec, caps.resolve("pte"), "fp32")
    other = export("digits_cnn")
    target = isolated_cache / key
    assert not target.exists()
    import shutil

    shutil.copytree(other.dir, target)  # e.g. a cache written by a buggy or older edgeprobe
    art = export("tiny_cnn", input_shape=(1, 3, 20, 20))
    assert not art.cached and art.dir == target
    assert art.manifest.model_ref == "tiny_cnn" and art.manifest.cache_key == key
