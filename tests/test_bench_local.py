"""End to end on the `local` device: real artifacts, real runner processes, real error paths."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edgeprobe
from edgeprobe.devices import MeasureConfig, measure, open_device
from edgeprobe.errors import RunnerNotBuiltError, UsageError
from edgeprobe.lower import Artifact
from edgeprobe.results import BenchResult


def _check_ok(r: BenchResult, iterations: int) -> None:
    assert r.ok, r.run.error
    run = r.run
    assert run.verification.checked and run.verification.passed
    assert run.verification.max_abs_error <= run.verification.atol + 1e-12 or run.verification.max_abs_error < 1e-3
    assert len(run.timing.iteration_ns) == iterations and all(ns > 0 for ns in run.timing.iteration_ns)
    assert run.timing.load_ms > 0 and run.timing.first_inference_ms > 0
    s = r.stats
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
    mem = run.memory
    assert mem.baseline_rss_bytes > 0 and mem.peak_rss_bytes >= mem.baseline_rss_bytes
    # This VM has no RAPL or battery: energy must say so, never carry a number.
    if not Path("/sys/class/powercap").exists():
        assert not run.energy.available and run.energy.reason and run.energy.energy_j is None
    assert run.environment.cores and run.environment.machine
    assert BenchResult.from_json(r.to_json()) == r


def test_python_runner_pte(tiny_pte):
    r = edgeprobe.bench(tiny_pte, runner="python", iterations=7, warmup=1)
    _check_ok(r, 7)
    assert r.run.runner.flavor == "python" and r.run.runner.runtime == "executorch"


def test_python_runner_ptl():
    r = edgeprobe.bench("tiny_cnn", format="ptl", iterations=5, warmup=1)
    _check_ok(r, 5)
    assert r.run.runner.runtime == "torchscript_lite" and r.manifest.format == "ptl"


def test_min_seconds_extends_the_loop(tiny_pte):
    r = edgeprobe.bench(tiny_pte, runner="python", iterations=1, warmup=0, min_seconds=0.3)
    assert r.ok and sum(r.run.timing.iteration_ns) >= 0.3e9 and r.stats.n > 1


def test_output_mismatch_is_an_error_record_without_timing(tiny_pte, tmp_path):
    """A fast wrong model is caught: tamper with the expected outputs."""
    import shutil

    from edgeprobe_runner import vectors as epv

    d = tmp_path / "tampered"
    shutil.copytree(tiny_pte.dir, d)
    sets = epv.read(str(d / "vectors.epv"))
    out = sets[0].expected[0]
    flipped = epv.RawTensor(out.dtype, out.shape, bytes(b ^ 0x40 for b in out.data))
    with open(d / "vectors.epv", "wb") as f:
        epv.write(f, [epv.TestSet(sets[0].inputs, (flipped,))])
    art = Artifact(d, tiny_pte.manifest)
    with open_device("local", runner="python") as dev:
        r = measure(dev, art, MeasureConfig(iterations=3))
    assert not r.ok and r.run.error.code == "output_mismatch"
    assert "differs" in r.run.error.message and r.run.timing is None


def test_truncated_pte_is_a_load_error(tiny_pte, tmp_path):
    import shutil

    d = tmp_path / "trunc"
    shutil.copytree(tiny_pte.dir, d)
    data = (d / "model.pte").read_bytes()
    (d / "model.pte").write_bytes(data[: len(data) // 3])
    with open_device("local", runner="python") as dev:
        r = measure(dev, Artifact(d, tiny_pte.manifest), MeasureConfig(iterations=2))
    assert not r.ok and r.run.error.code == "load_failed"


def _script(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "runner.sh"
    p.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return p


def test_runner_crash_becomes_error_record(tiny_pte, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_NATIVE_RUNNER", str(_script(tmp_path, "echo 'loading...' >&2\nkill -SEGV $$\n")))
    r = edgeprobe.bench(tiny_pte, iterations=2)
    assert not r.ok and r.run.error.code == "runner_crashed"
    assert "signal 11" in r.run.error.message and "loading..." in r.run.error.stderr_tail


def test_runner_hang_is_killed_at_timeout(tiny_pte, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_NATIVE_RUNNER", str(_script(tmp_path, "sleep 60 & sleep 60\n")))
    r = edgeprobe.bench(tiny_pte, iterations=2, timeout_s=1.0)
    assert not r.ok and r.run.error.code == "runner_timeout" and "--timeout-s" in r.run.error.message


def test_missing_native_runner_says_how_to_build(tiny_pte, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_NATIVE_RUNNER", "/nonexistent/edgeprobe_runner")
    with pytest.raises(RunnerNotBuiltError, match="edgeprobe runner build"):
        edgeprobe.bench(tiny_pte)


def test_native_runner_rejects_ptl():
    art = edgeprobe.export("tiny_cnn", format="ptl")
    with pytest.raises(UsageError, match="--runner python"):
        edgeprobe.bench(art, runner="native")


def test_cli_errors_are_one_line():
    env = {**os.environ}
    p = subprocess.run([sys.executable, "-m", "edgeprobe.cli", "bench", "resnet_18"], capture_output=True, text=True, env=env)
    assert p.returncode == 2
    assert "unknown model 'resnet_18'" in p.stderr and "resnet18" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "edgeprobe.cli", "bench", "tiny_cnn", "--device", "bogus:nothing"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "unknown device" in p.stderr
    p = subprocess.run([sys.executable, "-m", "edgeprobe.cli", "bench", "tiny_cnn", "--device", "adb:SERIAL123"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "adb-shell[usb]" in p.stderr and "Traceback" not in p.stderr


def test_cli_bench_json_and_show(tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "edgeprobe.cli", "bench", "tiny_cnn", "--runner", "python",
                        "--iterations", "4", "--min-seconds", "0", "--json", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "p50" in p.stdout and "energy" in p.stdout and "unavailable" in p.stdout
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and len(data["run"]["timing"]["iteration_ns"]) == 4
    p = subprocess.run([sys.executable, "-m", "edgeprobe.cli", "show", str(out)], capture_output=True, text=True)
    assert p.returncode == 0 and "tiny_cnn" in p.stdout and "p50" in p.stdout


def test_cli_devices_lists_local():
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "devices"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "local" in p.stdout
