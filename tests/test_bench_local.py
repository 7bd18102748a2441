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
from edgeprobe.devices import Device, open_device
from edgeprobe.session import MeasureConfig, measure
from edgeprobe.devices.local import LocalTransport
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


def test_native_runner_honours_min_seconds(tiny_pte, native_runner):
    r = edgeprobe.bench(tiny_pte, iterations=1, warmup=0, min_seconds=0.3)
    assert r.ok and sum(r.run.timing.iteration_ns) >= 0.3e9 and r.stats.n > 1
    assert r.run.config.min_seconds == 0.3


# ---------------------------------------------------------------- one directory per run (finding 4)

def _wrapper(tmp_path: Path, real: Path, name: str, body: str) -> Path:
    """A runner that runs the real one, then does ``body`` (a shell snippet; $out is the --output path)."""
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + textwrap.dedent(f"""\
        out=""; prev=""
        for a in "$@"; do [ "$prev" = "--output" ] && out="$a"; prev="$a"; done
        "{real}" "$@"; rc=$?
        """) + textwrap.dedent(body) + "exit $rc\n")
    p.chmod(0o755)
    return p


def test_a_runner_that_writes_nothing_is_a_bad_record_not_the_last_one(tiny_pte, native_runner, tmp_path, monkeypatch):
    """The artifact dir is shared by every bench of an artifact; a fixed result.json there made a
    runner that exited 0 without writing return the previous run's record."""
    t = LocalTransport(str(tmp_path / "device"))
    dev = Device("local", t, "native")
    first = measure(dev, tiny_pte, MeasureConfig(iterations=3, warmup=0))
    assert first.ok
    monkeypatch.setenv("EDGEPROBE_NATIVE_RUNNER", str(_script(tmp_path, "exit 0\n")))
    again = measure(dev, tiny_pte, MeasureConfig(iterations=3, warmup=0))
    assert not again.ok and again.run.error.code == "bad_record", again.run
    assert not (tmp_path / "device" / "runs").exists() or not any((tmp_path / "device" / "runs").iterdir())


def _concurrent(measure_a, measure_b, head_start_s: float = 0.8):
    """A starts first and stays alive (sleeps) after writing its record; B runs and finishes
    meanwhile. With one shared record path, A pulled B's record."""
    import threading
    import time

    out = {}
    ta = threading.Thread(target=lambda: out.__setitem__("a", measure_a()))
    ta.start()
    time.sleep(head_start_s)
    out["b"] = measure_b()
    ta.join(timeout=120)
    return out["a"], out["b"]


def test_two_concurrent_benches_on_one_local_device_keep_their_records(tiny_pte, native_runner, tmp_path, monkeypatch):
    slow = _wrapper(tmp_path, native_runner, "slow.sh", 'case "$*" in *"--iterations 3 "*) sleep 3;; esac\n')
    monkeypatch.setenv("EDGEPROBE_NATIVE_RUNNER", str(slow))
    t = LocalTransport(str(tmp_path / "device"))
    dev = Device("local", t, "native")
    a, b = _concurrent(lambda: measure(dev, tiny_pte, MeasureConfig(iterations=3, warmup=0)),
                       lambda: measure(dev, tiny_pte, MeasureConfig(iterations=9, warmup=0)))
    assert a.ok and b.ok, (a.run.error, b.run.error)
    assert len(a.run.timing.iteration_ns) == 3 and len(b.run.timing.iteration_ns) == 9


@pytest.fixture()
def tcp_runner(tmp_path, native_runner):
    """`edgeprobe runner serve` on loopback whose native runner sleeps after a 3-iteration run, and
    exits 0 without running (or writing anything) once tmp_path/silent exists."""
    import json as _json

    runner = _wrapper(tmp_path, native_runner, "slow-tcp.sh", 'case "$*" in *"--iterations 3 "*) sleep 3;; esac\n')
    silent_runner = tmp_path / "tcp-runner.sh"
    silent_runner.write_text(f'#!/bin/sh\n[ -f "{tmp_path}/silent" ] && exit 0\nexec "{runner}" "$@"\n')
    silent_runner.chmod(0o755)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeprobe", "runner", "serve", "--host", "127.0.0.1", "--port", "0", "--token", "tk",
         "--name", f"ep-runs-{os.getpid()}", "--workdir", str(tmp_path / "srv"), "--native-runner", str(silent_runner),
         "--no-zeroconf"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        yield int(_json.loads(line)["listening"].rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_two_concurrent_benches_on_one_tcp_runner_keep_their_records(tiny_pte, tcp_runner, tmp_path):
    def bench(iterations):
        with open_device(f"tcp:127.0.0.1:{tcp_runner}", token="tk") as dev:
            return measure(dev, tiny_pte, MeasureConfig(iterations=iterations, warmup=0))

    a, b = _concurrent(lambda: bench(3), lambda: bench(9), head_start_s=1.0)
    assert a.ok and b.ok, (a.run.error, b.run.error)
    assert len(a.run.timing.iteration_ns) == 3 and len(b.run.timing.iteration_ns) == 9
    # a runner that exits 0 without writing: bad_record, not the record of the run before
    (tmp_path / "silent").write_text("")
    c = bench(9)
    assert not c.ok and c.run.error.code == "bad_record", c.run


def test_bench_on_an_open_session_measures_there_and_refuses_another_device(tiny_pte, native_runner):
    from edgeprobe.errors import UsageError
    from edgeprobe.session import open_session

    with open_session("local") as s:
        a = edgeprobe.bench(tiny_pte, session=s, iterations=2, warmup=0)
        b = edgeprobe.bench(tiny_pte, session=s, iterations=2, warmup=0)
        assert a.ok and b.ok and s.stats.measurements == 2 and s.stats.deploys == 1  # one deploy for both
        with pytest.raises(UsageError, match="the session is open on local"):
            edgeprobe.bench(tiny_pte, session=s, device="adb:127.0.0.1:5555")
    assert a.request is not None and "session" not in a.request.args and a.request.reproducible
