"""The arm64 native runner: cross-built with Debian's g++-aarch64-linux-gnu against the aarch64
executorch wheel's libraries, run under qemu-aarch64-static on a real .pte — directly and deployed
over ADB to a test adbd that reports ABI arm64-v8a."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

import edgeprobe
from edgeprobe.results import RunRecord

from adbd import TestAdbd

QEMU = shutil.which("qemu-aarch64-static")
pytestmark = [
    pytest.mark.real_peer("cross-compiler", "qemu"),
    pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                       reason="no cross compiler (apt-get install g++-aarch64-linux-gnu)"),
    pytest.mark.skipif(QEMU is None, reason="no qemu user-mode emulation (apt-get install qemu-user-static)"),
]


@pytest.fixture(scope="module")
def arm64_root(tmp_path_factory):
    """A runner root holding only an aarch64 bundle, cross-built for this test run."""
    from edgeprobe.native import build_native_runner

    root = tmp_path_factory.mktemp("runners")
    build_native_runner(root / "aarch64", target="aarch64", log=lambda _m: None)
    return root


def test_arm64_runner_under_qemu_on_a_real_pte(arm64_root, tiny_pte, tmp_path):
    binary = arm64_root / "aarch64/bin/edgeprobe_runner"
    assert open(binary, "rb").read(20)[18:20] == b"\xb7\x00"  # e_machine = EM_AARCH64
    out = tmp_path / "r.json"
    proc = subprocess.run([QEMU, "-L", "/usr/aarch64-linux-gnu", str(binary), "--model", str(tiny_pte.model_path),
                           "--vectors", str(tiny_pte.vectors_path), "--iterations", "3", "--warmup", "1",
                           "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = RunRecord.from_runner_json(json.loads(out.read_text()))
    assert rec.status == "ok" and rec.verification.passed
    assert rec.environment.machine == "aarch64" and len(rec.timing.iteration_ns) == 3


def test_bench_over_adb_deploys_the_arm64_runner(arm64_root, tiny_pte, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_RUNNER_DIR", str(arm64_root))
    monkeypatch.setenv("EDGEPROBE_ADB_KEY", str(tmp_path / "keys" / "adbkey"))
    props = {"ro.product.manufacturer": "edgeprobe", "ro.product.model": "qemu-arm64",
             "ro.product.cpu.abi": "arm64-v8a", "ro.build.version.sdk": "34"}
    with TestAdbd(tmp_path / "dev", props=props, emulate_aarch64=True) as d:
        r = edgeprobe.bench(tiny_pte, device=f"adb:127.0.0.1:{d.port}", iterations=3, warmup=1)
        assert r.ok, r.run.error
        assert r.run.environment.machine == "aarch64" and r.run.verification.passed
        assert (d.root / "data/local/tmp/edgeprobe/runner/aarch64/bin/edgeprobe_runner").is_file()
