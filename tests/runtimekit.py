"""What the peer-runtime tests (test_onnx, test_openvino, test_ncnn, test_litert) do alike, once: each
calls these and keeps its own assertions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from edgeprobe.devices import open_device
from edgeprobe.lower import Artifact
from edgeprobe.results import BenchResult
from edgeprobe.session import MeasureConfig, measure
from edgeprobe_runner import vectors as epv


def measure_with_tampered_vectors(art: Artifact, tmp_path: Path) -> BenchResult:
    """``art`` copied with every byte of its first expected output flipped (bit 6), measured on local."""
    d = tmp_path / "tampered"
    shutil.copytree(art.dir, d)
    sets = epv.read(str(d / "vectors.epv"))
    out = sets[0].expected[0]
    flipped = epv.RawTensor(out.dtype, out.shape, bytes(b ^ 0x40 for b in out.data))
    with open(d / "vectors.epv", "wb") as f:
        epv.write(f, [epv.TestSet(sets[0].inputs, (flipped,))])
    with open_device("local", runner="python") as dev:
        return measure(dev, Artifact(d, art.manifest), MeasureConfig(iterations=2))


def usage_record(tmp_path: Path, model_name: str) -> tuple[int, dict]:
    """(exit code, record) of the Python runner refusing --threads -1 for a model file named ``model_name``."""
    out = tmp_path / "rec.json"
    p = subprocess.run([sys.executable, "-m", "edgeprobe_runner", "--model", model_name, "--threads", "-1",
                        "--output", str(out)], capture_output=True, text=True, timeout=60)
    return p.returncode, json.loads(out.read_text())
