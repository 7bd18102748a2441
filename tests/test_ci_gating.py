"""The CI gate itself (tests/conftest.py and .ci/run), run in real pytest and bash subprocesses:
under CI=true a real-peer test that cannot run fails instead of skipping, a module skipped at
collection fails, an empty run fails, the time budget holds; no fixture leaks the runner into the
environment of later tests; .ci/run fails when a package cannot be installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")
CI_RUN = Path(__file__).resolve().parent.parent / ".ci" / "run"

SKIPPING = """
import pytest

@pytest.mark.real_peer("adb")
def test_needs_adb():
    pytest.skip("Debian's adb client is not installed")

@pytest.mark.real_peer("qemu")
@pytest.mark.skipif(True, reason="no qemu here")
def test_needs_qemu():
    pass

@pytest.mark.real_peer("netns", "zeroconf")
def test_runs_against_two_peers():
    pass

def test_plain_skip_is_not_a_real_peer():
    pytest.skip("not a real peer")

@pytest.mark.real_peer("adb")
@pytest.mark.xfail(reason="known", strict=True)
def test_xfail_stays_xfail():
    assert False
"""


@pytest.fixture()
def gated(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("EDGEPROBE_CI_BUDGET_S", raising=False)
    return pytester


def test_real_peer_skip_fails_under_ci_and_skips_otherwise(gated, monkeypatch):
    gated.makepyfile(test_peers=SKIPPING)
    r = gated.runpytest_subprocess("-rA")
    r.assert_outcomes(passed=1, skipped=3, xfailed=1)
    assert r.ret == 0
    r.stdout.fnmatch_lines(["*real peers (CI not set: skips allowed)*",
                            "adb: 0 passed, 0 failed, 1 skipped, 1 xfailed*", "  SKIPPED  test_peers.py::test_needs_adb",
                            "  XFAILED  test_peers.py::test_xfail_stays_xfail",
                            "qemu: 0 passed, 0 failed, 1 skipped*",
                            "netns: 1 passed, 0 failed, 0 skipped*", "zeroconf: 1 passed, 0 failed, 0 skipped*"])

    monkeypatch.setenv("CI", "true")
    r = gated.runpytest_subprocess("-rA")
    # the call-time skip is a failure, the skipif (setup time) an error; a plain skip stays a skip
    r.assert_outcomes(passed=1, failed=1, errors=1, skipped=1, xfailed=1)
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(["*ERROR at setup of test_needs_qemu*",
                            "CI=true: this test needs the real peer qemu and could not run*: no qemu here",
                            "*test_needs_adb*",
                            "CI=true: this test needs the real peer adb and could not run*: Debian's adb client*",
                            "*real peers (CI=true: a skip is a failure)*",
                            "adb: 0 passed, 1 failed, 0 skipped, 1 xfailed*", "  FAILED   test_peers.py::test_needs_adb",
                            "qemu: 0 passed, 1 failed, 0 skipped*"])
    listed = [line.split()[-1] for line in r.outlines if line.startswith("  ") and "::" in line]
    assert "test_peers.py::test_plain_skip_is_not_a_real_peer" not in listed and len(listed) == 5, listed


def test_module_skipped_at_collection_fails_under_ci(gated, monkeypatch):
    gated.makepyfile(test_gone="import pytest\npytest.skip('no atheris', allow_module_level=True)\n",
                     test_here="def test_ok():\n    pass\n")
    r = gated.runpytest_subprocess()
    r.assert_outcomes(passed=1, skipped=1)
    monkeypatch.setenv("CI", "true")
    r = gated.runpytest_subprocess()
    assert r.ret == pytest.ExitCode.INTERRUPTED  # collection error
    r.stdout.fnmatch_lines(["*CI=true: test_gone.py was skipped at collection: no atheris*"])


def test_unknown_peer_kind_and_empty_run_fail(gated, monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert gated.runpytest_subprocess().ret == pytest.ExitCode.NO_TESTS_COLLECTED  # 5: .ci/run fails on it
    gated.makepyfile(test_typo="import pytest\n\n@pytest.mark.real_peer('adbd')\ndef test_x():\n    pass\n")
    r = gated.runpytest_subprocess()
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*unknown real peer 'adbd'; known: adb, qemu, cross-compiler, netns, zeroconf, libfuzzer*"])


def test_time_budget_fails_a_slow_ci_run(gated, monkeypatch):
    gated.makepyfile(test_slow="import time\n\ndef test_slow():\n    time.sleep(0.3)\n")
    monkeypatch.setenv("EDGEPROBE_CI_BUDGET_S", "0.1")
    assert gated.runpytest_subprocess().ret == 0  # not CI: no budget
    monkeypatch.setenv("CI", "true")
    r = gated.runpytest_subprocess()
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(["*CI=true: the run took * s, over its budget of 0 s (EDGEPROBE_CI_BUDGET_S)*"])
    monkeypatch.setenv("EDGEPROBE_CI_BUDGET_S", "600")
    assert gated.runpytest_subprocess().ret == 0


def test_native_runner_fixture_leaves_the_environment_alone(gated, monkeypatch, tmp_path):
    """Finding 19: the fixture used to put EDGEPROBE_NATIVE_RUNNER into os.environ for the rest of
    the session when it had to build, so the ADB deployment tests that ran later skipped. Now the
    test that asks for it gets a whole bundle (bin/ and lib/) that both the local device and an ADB
    deployment find, and the next test sees the environment it started with. The build is faked
    here (a bundle-shaped directory): what is tested is the fixture, not CMake."""
    gated.makepyfile(test_env="""
import os
import platform
from pathlib import Path

import edgeprobe.native as native

def _build(dest, *, target=None, jobs=2, log=print):
    dest = Path(dest)
    (dest / "lib").mkdir(parents=True)
    (dest / "lib" / "libexecutorch.so").write_bytes(b"")
    (dest / "bin").mkdir()
    binary = dest / "bin" / native.BINARY
    binary.write_text("#!/bin/sh\\nexit 0\\n")
    binary.chmod(0o755)
    native.write_bundle_manifest(dest, platform.machine())  # bundle.json, as a real build writes it
    return binary

native.build_native_runner = _build
BEFORE = {k: os.environ.get(k) for k in ("EDGEPROBE_NATIVE_RUNNER", "EDGEPROBE_RUNNER_DIR")}

def test_a_bundle_for_local_and_adb(native_runner):
    assert native.find_native_runner() == native_runner             # the local device's runner
    assert native.install_dir() / "bin" / native.BINARY == native_runner  # what deploy_native_runner pushes
    assert (native_runner.parent.parent / "lib" / "libexecutorch.so").is_file()

def test_b_later_test_sees_the_environment_it_started_with():
    assert {k: os.environ.get(k) for k in BEFORE} == BEFORE

def test_c_again(native_runner):
    test_a_bundle_for_local_and_adb(native_runner)
""")
    empty = tmp_path / "no-runner-here"
    empty.mkdir()
    monkeypatch.setenv("EDGEPROBE_RUNNER_DIR", str(empty))  # nothing installed: the fixture must build
    monkeypatch.delenv("EDGEPROBE_NATIVE_RUNNER", raising=False)
    r = gated.runpytest_subprocess("-p", "no:randomly")
    r.assert_outcomes(passed=3)
    assert not any(empty.iterdir())  # the build went to a temp dir, not into the user's runner dir


# ------------------------------------------------------------------------------------------ .ci/run


def _ci_tree(tmp_path: Path, *, installed: bool, uid: int = 0, apt_rc: int = 0, make_rc: int = 0) -> tuple[Path, dict]:
    """A copy of .ci/run in an empty tree, with dpkg-query, id, apt-get, make and .ci/litert-env.sh
    replaced by scripts that report, fail or record as told (the script's own logic runs for real)."""
    root, fake = tmp_path / "repo", tmp_path / "bin"
    (root / ".ci").mkdir(parents=True)
    shutil.copy2(CI_RUN, root / ".ci" / "run")
    (root / ".ci" / "litert-env.sh").write_text(
        f"echo \"litert-env PROJECT_PYTHON=$PROJECT_PYTHON\" >> {tmp_path}/make.log\n")
    fake.mkdir()
    scripts = {
        "dpkg-query": f"echo -n '{'install ok installed' if installed else 'unknown ok not-installed'}'",
        "id": f"echo {uid}",
        "apt-get": f"echo \"apt-get $*\" >> {tmp_path}/apt.log; "
                   + ("exit 0" if apt_rc == 0 else f"echo 'E: Unable to locate package clang' >&2; exit {apt_rc}"),
        "make": f"echo \"CI=$CI budget=$EDGEPROBE_CI_BUDGET_S $*\" >> {tmp_path}/make.log; exit {make_rc}",
    }
    for name, body in scripts.items():
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "EDGEPROBE_CI_BUDGET_S", "PYTEST_ARGS")}
    env["PATH"] = f"{fake}:/usr/bin:/bin"
    return root, env


def _run_ci(root: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)


def test_ci_run_fails_when_apt_cannot_install(tmp_path):
    root, env = _ci_tree(tmp_path, installed=False, apt_rc=100)
    p = _run_ci(root, env)
    assert p.returncode != 0
    assert "apt-get could not install adb g++-aarch64-linux-gnu qemu-user-static iproute2 clang libclang-rt-14-dev" \
        in p.stderr and "Unable to locate package clang" in p.stderr, p.stderr
    assert not (tmp_path / "make.log").exists()  # the tests never ran to skip


def test_ci_run_without_root_cannot_install_and_fails(tmp_path):
    root, env = _ci_tree(tmp_path, installed=False, uid=1000)
    p = _run_ci(root, env)
    assert p.returncode != 0 and "not root with apt-get" in p.stderr, p.stderr
    assert not (tmp_path / "apt.log").exists() and not (tmp_path / "make.log").exists()


def test_ci_run_installs_then_runs_make_test_with_ci_true(tmp_path):
    root, env = _ci_tree(tmp_path, installed=False)
    p = _run_ci(root, env)
    assert p.returncode == 0, p.stderr
    apt = (tmp_path / "apt.log").read_text().splitlines()
    assert apt[0].startswith("apt-get update") and apt[1].endswith(
        "install -y -qq adb g++-aarch64-linux-gnu qemu-user-static iproute2 clang libclang-rt-14-dev "
        "nlohmann-json3-dev postgresql chromium openjdk-17-jdk-headless junit5 libandroid-json-java")
    steps = (tmp_path / "make.log").read_text().splitlines()
    assert steps[0] == "CI=true budget=1800 install"  # the project venv first: the converter env borrows its torch
    assert steps[1] == "litert-env PROJECT_PYTHON=.venv/bin/python"
    assert steps[2] == "CI=true budget=1800 android-core"  # the JVM core's jar before the tests that run it
    assert steps[3].startswith("CI=true budget=1800 test PYTEST_ARGS=--durations=25") and len(steps) == 4


def test_ci_run_passes_a_failing_make_on(tmp_path):
    """pytest's exit 5 (nothing collected) or 1 makes `make test` fail, and so .ci/run."""
    root, env = _ci_tree(tmp_path, installed=True, make_rc=2)
    p = _run_ci(root, env)
    assert p.returncode == 2 and not (tmp_path / "apt.log").exists()
