"""The native C++ runner, built against the executorch wheel and run for real."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import pytest
import torch

import edgeprobe
from edgeprobe.devices import MeasureConfig, measure, open_device
from edgeprobe.lower import Artifact


def test_native_bench_xnnpack(native_runner, tiny_pte):
    r = edgeprobe.bench(tiny_pte, iterations=9, warmup=2)
    assert r.ok, r.run.error
    run = r.run
    assert run.runner.flavor == "native" and run.runner.runtime == "executorch"
    assert run.verification.checked and run.verification.passed
    assert len(run.timing.iteration_ns) == 9 and run.timing.load_ms > 0
    assert run.memory.peak_rss_bytes >= run.memory.baseline_rss_bytes > 0
    assert run.config.threads_used and run.config.threads_used >= 1
    assert run.energy is not None and (run.energy.available or run.energy.reason)


def test_native_portable_and_threads(native_runner, tiny_portable_pte):
    r = edgeprobe.bench(tiny_portable_pte, iterations=3, threads=1)
    assert r.ok, r.run.error
    assert r.run.config.threads_requested == 1 and r.run.config.threads_used == 1


def test_native_and_python_runners_agree(native_runner, tiny_pte, tmp_path):
    """Both runners check the same .pte against the same expected outputs, and compute the same."""
    results = {}
    for flavor in ("native", "python"):
        out = tmp_path / f"{flavor}.epv"
        with open_device("local", runner=flavor) as dev:
            r = measure(dev, tiny_pte, MeasureConfig(iterations=2, warmup=0), save_outputs_local=out)
        assert r.ok, (flavor, r.run.error)
        from edgeprobe_runner import vectors as epv

        results[flavor] = [torch.frombuffer(bytearray(t.data), dtype=torch.float32) for t in epv.read(str(out))[0].expected]
    for a, b in zip(results["native"], results["python"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_native_output_mismatch(native_runner, tiny_pte, tmp_path):
    from edgeprobe_runner import vectors as epv

    d = tmp_path / "bad"
    shutil.copytree(tiny_pte.dir, d)
    s = epv.read(str(d / "vectors.epv"))[0]
    wrong = epv.RawTensor("float32", s.expected[0].shape, torch.full(s.expected[0].shape, 7.0).numpy().tobytes())
    with open(d / "vectors.epv", "wb") as f:
        epv.write(f, [epv.TestSet(s.inputs, (wrong,))])
    r = edgeprobe.bench(Artifact(d, tiny_pte.manifest), iterations=2)
    assert not r.ok and r.run.error.code == "output_mismatch" and r.run.timing is None


def test_native_truncated_and_corrupt_pte(native_runner, tiny_pte, tmp_path):
    for name, mangle in (("trunc", lambda b: b[: len(b) // 2]), ("zeros", lambda b: b"\0" * len(b))):
        d = tmp_path / name
        shutil.copytree(tiny_pte.dir, d)
        (d / "model.pte").write_bytes(mangle((d / "model.pte").read_bytes()))
        r = edgeprobe.bench(Artifact(d, tiny_pte.manifest), iterations=2)
        assert not r.ok and r.run.error.code == "load_failed", (name, r.run.error)


def test_native_bad_arguments_exit_2(native_runner):
    p = subprocess.run([str(native_runner), "--iterations", "x"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr


def test_rapl_meter_from_fake_sysfs(native_runner, tiny_pte, tmp_path, monkeypatch):
    """The energy arithmetic against a powercap tree whose counter a thread drives (1 J per 10 ms)."""
    dom = tmp_path / "sys/class/powercap/intel-rapl:0"
    dom.mkdir(parents=True)
    (dom / "name").write_text("package-0\n")
    (dom / "max_energy_range_uj").write_text("262143328850\n")
    (dom / "energy_uj").write_text("1000\n")
    stop = threading.Event()

    def drive():
        v = 1000
        while not stop.is_set():
            v += 1_000_000
            tmp = dom / "energy_uj.tmp"
            tmp.write_text(f"{v}\n")
            tmp.replace(dom / "energy_uj")
            time.sleep(0.01)

    t = threading.Thread(target=drive, daemon=True)
    t.start()
    monkeypatch.setenv("EDGEPROBE_SYSFS_ROOT", str(tmp_path / "sys"))
    try:
        r = edgeprobe.bench(tiny_pte, iterations=1, warmup=0, min_seconds=0.3)
    finally:
        stop.set()
        t.join()
    e = r.run.energy
    assert r.ok and e.available and e.meter == "rapl"
    # ~100 J/s driven; allow for scheduling jitter on a loaded 2-core machine.
    assert 0.2 * e.duration_s * 100 <= e.energy_j <= 3 * e.duration_s * 100 + 2
    assert list(e.domains) == ["intel-rapl:0:package-0"]


def test_profile_lists_real_operators(native_runner):
    rep = edgeprobe.profile("tiny_cnn", iterations=3, warmup=1)
    assert rep.result.ok, rep.result.run.error
    assert rep.operators and rep.etdump_path.stat().st_size > 0
    names = " ".join(o.name for o in rep.operators)
    assert any(o.delegated for o in rep.operators) or "conv" in names.lower()
    assert all(o.count >= 1 and o.total_ms >= 0 for o in rep.operators)


def test_profile_portable_shows_aten_ops(native_runner):
    rep = edgeprobe.profile("tiny_cnn", backend="portable", iterations=2, warmup=0)
    assert rep.result.ok, rep.result.run.error
    names = [o.name for o in rep.operators]
    assert any("convolution" in n for n in names), names
    assert not any(o.delegated for o in rep.operators)


@pytest.mark.slow
def test_native_mobilenet_v2_end_to_end(native_runner):
    r = edgeprobe.bench("mobilenet_v2", iterations=5, warmup=1)
    assert r.ok, r.run.error
    assert r.manifest.planned_memory_bytes and r.stats.p50_ms > 0
    assert json.loads(r.to_json())["run"]["verification"]["passed"] is True
