"""Fault injection: kill -9 at every write point of lower/export/cache, the runner install, the
result and sweep saves and the ADB key pair, in a subprocess, then check that nothing
half-written is served and that a rerun succeeds.

The kill comes from ``edgeprobe.fsutil._fault_point(name)``: the subprocess runs with
``EDGEPROBE_FAULT_POINT=name`` and SIGKILLs itself there. ``test_every_fault_point_is_exercised``
scans the package for fault points, so a new write point without a kill test fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeprobe.api import export
from edgeprobe.errors import RunnerNotBuiltError
from edgeprobe.lower import load_artifact
from edgeprobe.native import BINARY, configure_and_build, install_native_runner, verify_bundle, write_bundle_manifest

from adbd import TestAdbd  # tests/ is on sys.path (rootdir conftest)

PACKAGE = Path(__file__).resolve().parent.parent / "host" / "edgeprobe"
# (point, format): both targets write model files; .ptl lowering starts faster (no EXIR import)
LOWER_CACHE_POINTS = [("lower:model-written", "pte"), ("lower:model-written", "ptl"), ("lower:manifest-written", "ptl")]
LOWER_REPLACE_POINTS = [("lower:vectors-written", "exchange", "ptl"), ("lower:swapped", "exchange", "ptl"),
                        ("lower:old-aside", "no-exchange", "ptl")]
RUNNER_POINTS = [("runner:installed", "exchange"), ("runner-manifest:temp-written", "exchange"),
                 ("runner:manifest-written", "exchange"), ("runner:swapped", "exchange"),
                 ("runner:old-aside", "no-exchange")]
SWEEP_POINTS = [("sweep-save:temp-written", "json"), ("sweep-csv:temp-written", "csv")]
WRITE_FAULTS = ["plan-save", "report-save", "write"]
KEY_POINTS = ["adbkey-public:temp-written", "adbkey-private:temp-written"]
KILL_TESTED = {*(p for p, _ in LOWER_CACHE_POINTS), *(p for p, _, _ in LOWER_REPLACE_POINTS), *(p for p, _ in RUNNER_POINTS),
               *(p for p, _ in SWEEP_POINTS), *(f"{f}:temp-written" for f in WRITE_FAULTS), *KEY_POINTS,
               "result-save:temp-written"}


def _killed_at(point: str, code: str, *args: str, env: dict[str, str] | None = None, timeout_s: float = 300) -> None:
    """Run ``code`` in a fresh interpreter that SIGKILLs itself at ``point``; insist it got there."""
    full = {k: v for k, v in os.environ.items() if k != "EDGEPROBE_FAULT_POINT"}
    full.update(env or {})
    full["EDGEPROBE_FAULT_POINT"] = point
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=full, capture_output=True,
                          text=True, timeout=timeout_s)
    assert proc.returncode == -signal.SIGKILL, (
        f"expected a kill at {point}, got exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def _beside(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# ------------------------------------------------------------------------------------------ lower / export / cache

LOWER = """
    import sys
    import edgeprobe.fsutil as fsutil
    if sys.argv[2] == "no-exchange":
        fsutil._exchange = lambda a, b: False  # a kernel or filesystem without renameat2(RENAME_EXCHANGE)
    from edgeprobe.api import export
    export("tiny_cnn", out_dir=sys.argv[1] or None, format=sys.argv[3])
"""


@pytest.mark.parametrize("point,fmt", LOWER_CACHE_POINTS)
def test_killed_lowering_into_the_cache_is_never_served(tmp_path, monkeypatch, point, fmt):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEPROBE_CACHE_DIR", str(cache))
    _killed_at(point, LOWER, "", "exchange", fmt)
    entries = [p.name for p in cache.iterdir() if p.name != ".locks"]
    assert entries and all(n.startswith(".") and ".tmp-" in n for n in entries)  # only the hidden temporary
    art = export("tiny_cnn", format=fmt)  # the rerun
    assert not art.cached and load_artifact(art.dir).manifest.cache_key == art.manifest.cache_key
    assert sorted(p.name for p in cache.iterdir()) == sorted([".locks", art.dir.name])  # leftovers cleaned
    assert export("tiny_cnn", format=fmt).cached


@pytest.fixture(scope="module")
def old_artifact(tmp_path_factory) -> Path:
    return export("digits_cnn", format="ptl", out_dir=tmp_path_factory.mktemp("old") / "art").dir


@pytest.mark.parametrize("point,mode,fmt", LOWER_REPLACE_POINTS)
def test_killed_replacement_of_an_out_dir_leaves_a_whole_artifact(tmp_path, old_artifact, point, mode, fmt):
    art = tmp_path / "art"
    shutil.copytree(old_artifact, art)
    old = load_artifact(art)
    _killed_at(point, LOWER, str(art), mode, fmt)
    if art.exists():  # the old artifact or the new one, complete
        got = load_artifact(art).manifest
        assert got.model_ref == ("tiny_cnn" if point == "lower:swapped" else "digits_cnn")
        if got.model_ref == "digits_cnn":
            assert got.cache_key == old.manifest.cache_key
    else:  # renamed aside, the new one not yet in: no artifact at all, never a mixed one
        assert point == "lower:old-aside"
        aside = [p for p in tmp_path.iterdir() if p.name.startswith(".art.old-")]
        assert len(aside) == 1 and load_artifact(aside[0]).manifest.model_ref == "digits_cnn"
    again = export("tiny_cnn", out_dir=art, format=fmt)  # the rerun
    assert again.manifest.model_ref == "tiny_cnn" and load_artifact(art).manifest.model_ref == "tiny_cnn"
    assert _beside(art) == ["art"]


# ------------------------------------------------------------------------------------------ runner install

INSTALL = """
    import sys
    from pathlib import Path
    import edgeprobe.fsutil as fsutil
    if sys.argv[3] == "no-exchange":
        fsutil._exchange = lambda a, b: False
    from edgeprobe.native import install_native_runner
    install_native_runner(Path(sys.argv[1]), Path(sys.argv[2]), log=lambda _m: None)
"""


@pytest.fixture(scope="module")
def runner_build(tmp_path_factory) -> Path:
    """One real build tree (configure + compile) per session; each test runs its real `cmake --install`."""
    build = tmp_path_factory.mktemp("runner-build")
    configure_and_build(build, jobs=2, log=lambda _m: None)
    return build


def _marked_bundle(build: Path, dest: Path) -> None:
    """A valid bundle that differs from a fresh install (an extra listed file), so old and new can be told apart."""
    install_native_runner(build, dest, log=lambda _m: None)
    (dest / "lib" / "OLD-BUNDLE").write_text("old")
    write_bundle_manifest(dest, os.uname().machine)


@pytest.mark.parametrize("point,mode", RUNNER_POINTS)
def test_killed_runner_install_never_leaves_a_half_bundle(tmp_path, monkeypatch, runner_build, point, mode):
    root = tmp_path / "runners"
    dest = root / os.uname().machine
    _marked_bundle(runner_build, dest)
    monkeypatch.setenv("EDGEPROBE_RUNNER_DIR", str(root))
    monkeypatch.delenv("EDGEPROBE_NATIVE_RUNNER", raising=False)
    _killed_at(point, INSTALL, str(runner_build), str(dest), mode)
    from edgeprobe.native import find_native_runner

    if dest.exists():
        assert find_native_runner() == dest / "bin" / BINARY  # verified: whole, old or new
        old = "lib/OLD-BUNDLE" in verify_bundle(dest)
        assert old == (point != "runner:swapped")
    else:
        assert point == "runner:old-aside"
        with pytest.raises(RunnerNotBuiltError, match="edgeprobe runner build"):
            find_native_runner()
    install_native_runner(runner_build, dest, log=lambda _m: None)  # the rerun
    assert "lib/OLD-BUNDLE" not in verify_bundle(dest) and find_native_runner() == dest / "bin" / BINARY
    assert [n for n in _beside(dest) if not n.endswith(".lock")] == [dest.name]
    proc = subprocess.run([str(dest / "bin" / BINARY), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_killed_first_install_leaves_no_bundle(tmp_path, monkeypatch, runner_build):
    root = tmp_path / "runners"
    dest = root / os.uname().machine
    monkeypatch.setenv("EDGEPROBE_RUNNER_DIR", str(root))
    monkeypatch.delenv("EDGEPROBE_NATIVE_RUNNER", raising=False)
    _killed_at("runner:installed", INSTALL, str(runner_build), str(dest), "exchange")
    assert not dest.exists()
    from edgeprobe.native import find_native_runner

    with pytest.raises(RunnerNotBuiltError, match="not found"):
        find_native_runner()


# ------------------------------------------------------------------------------------------ saves

SAVE_RESULT = """
    import sys
    from edgeprobe.results import BenchResult
    BenchResult.load(sys.argv[1]).save(sys.argv[2])
"""


@pytest.fixture(scope="module")
def record(tmp_path_factory, native_runner, tiny_pte) -> Path:
    import edgeprobe

    r = edgeprobe.bench(tiny_pte, device="local", iterations=3, warmup=0)
    assert r.ok, r.run.error
    return r.save(tmp_path_factory.mktemp("record") / "r.json")


def test_killed_result_save_keeps_the_previous_record(tmp_path, record):
    from edgeprobe.results import BenchResult

    target = tmp_path / "result.json"
    target.write_text('{"previous": true}\n')
    _killed_at("result-save:temp-written", SAVE_RESULT, str(record), str(target))
    assert target.read_text() == '{"previous": true}\n'
    BenchResult.load(record).save(target)  # the rerun
    assert BenchResult.load(target) == BenchResult.load(record)


SAVE_SWEEP = """
    import sys
    from edgeprobe.compress.sweep import SweepResult, SweepRow
    s = SweepResult("tiny_cnn", "local", "random", 4, None, (SweepRow("fp32", "error", "x"),), "2026-01-01", "sqnr_db")
    (s.save_json if sys.argv[2] == "json" else s.save_csv)(sys.argv[1])
"""


@pytest.mark.parametrize("point,kind", SWEEP_POINTS)
def test_killed_sweep_save_keeps_the_previous_file(tmp_path, point, kind):
    target = tmp_path / f"sweep.{kind}"
    target.write_text("previous\n")
    _killed_at(point, SAVE_SWEEP, str(target), kind)
    assert target.read_text() == "previous\n"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SAVE_SWEEP), str(target), kind],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = target.read_text()
    assert (json.loads(text)["rows"][0]["recipe"] == "fp32") if kind == "json" else text.startswith("recipe,")


WRITE_TEXT = """
    import sys
    from edgeprobe.fsutil import atomic_write_text
    atomic_write_text(sys.argv[1], "new\\n", fault=sys.argv[2])
"""


@pytest.mark.parametrize("fault", WRITE_FAULTS)
def test_killed_atomic_write_keeps_the_previous_file(tmp_path, fault):
    """`edgeprobe split --json` (plan-save), `edgeprobe report` (report-save) and any other caller of
    atomic_write_text (default name)."""
    target = tmp_path / "plan.json"
    target.write_text("previous\n")
    _killed_at(f"{fault}:temp-written", WRITE_TEXT, str(target), fault)
    assert target.read_text() == "previous\n"


# ------------------------------------------------------------------------------------------ ADB key pair

MAKE_KEY = """
    from edgeprobe.devices.adb import load_signer
    load_signer()
"""


@pytest.mark.parametrize("point", KEY_POINTS)
def test_killed_key_generation_is_recovered_on_the_next_run(tmp_path, monkeypatch, point):
    key = tmp_path / "keys" / "adbkey"
    monkeypatch.setenv("EDGEPROBE_ADB_KEY", str(key))
    _killed_at(point, MAKE_KEY)
    assert not key.exists()  # the private key is the last file written: no half pair is ever in place
    from edgeprobe.devices.adb import AdbTransport

    with TestAdbd(tmp_path / "dev") as d:  # the rerun makes a whole pair and authenticates with it
        t = AdbTransport(f"127.0.0.1:{d.port}", auth_timeout_s=5)
        t.close()
        t = AdbTransport(f"127.0.0.1:{d.port}", auth_timeout_s=5)
        assert t.info()["model"] == "test-adbd"
        t.close()
        assert len(d.authorized) == 1
    assert (key.stat().st_mode & 0o777) == 0o600
    leftovers = list(key.parent.glob(".adbkey*.tmp-*"))  # a killed generation's temporaries (0600)
    for p in leftovers:
        os.utime(p, (0, 0))
    key.unlink()
    from edgeprobe.devices.adb import load_signer

    load_signer()  # the next generation removes temporaries older than a minute
    assert list(key.parent.glob(".adbkey*.tmp-*")) == []


# ------------------------------------------------------------------------------------------ coverage


def _declared_points() -> set[str]:
    """Every fault point the package can reach: literal ``_fault_point("x")`` calls, plus the
    ``fault="x"`` names of atomic writes (``x:temp-written``) and directory swaps
    (``x:swapped``, ``x:old-aside``)."""
    points: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        points.update(re.findall(r'_fault_point\("([^"{}]+)"\)', text))
        for call, name in re.findall(r'(\w+)\([^\n]*?\bfault="([a-z-]+)"', text):  # each such call is one line
            points.update({f"{name}:swapped", f"{name}:old-aside"} if call == "replace_dir" else {f"{name}:temp-written"})
        points.update(f"{n}:temp-written" for n in re.findall(r'_atomic_key_write\([^\n]*"([a-z-]+)"\)', text))
    points.add("write:temp-written")  # atomic_writer's default name
    return points


def test_every_fault_point_is_exercised():
    """Each fault point in the package has a kill test above, and each kill test names a real point."""
    declared = _declared_points()
    assert {"lower:model-written", "lower:swapped", "runner:installed", "result-save:temp-written",
            "adbkey-private:temp-written"} <= declared
    assert not sorted(declared - KILL_TESTED), f"fault points without a kill test: {sorted(declared - KILL_TESTED)}"
    assert not sorted(KILL_TESTED - declared), f"kill tests of points that no longer exist: {sorted(KILL_TESTED - declared)}"
