"""android_app's Android adapters, type-checked (issue 16): compiled with kotlinc against API stubs
generated from real API descriptions (Android: chaquopy-stubs-android's API 36 .pyi; ExecuTorch: the
public declarations of pytorch/executorch's own Kotlin sources) and core's jar. Compile only: no
Android SDK, Gradle or ART can be had here, so nothing of app/ is packaged or run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from jvmkit import APP, require_jar

pytestmark = pytest.mark.real_peer("jvm")

SUMMARY = re.compile(r"app-check: (\d+) Kotlin files type-checked against (\d+) API classes")


def _app_check(env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    require_jar()
    return subprocess.run(["bash", str(APP / "tools" / "build.sh"), "app-check"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env_extra or {})})


def test_the_adapters_type_check_against_the_real_api_signatures():
    p = _app_check()
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    m = SUMMARY.search(p.stdout)
    assert m, p.stdout[-2000:]
    kt_files = len(list((APP / "app" / "src" / "main" / "kotlin").rglob("*.kt")))
    assert int(m.group(1)) == kt_files >= 6 and int(m.group(2)) >= 30, m.group(0)


def test_a_wrong_call_into_android_or_executorch_fails_the_check(tmp_path):
    """A wrong argument type into BatteryManager and a method ExecuTorch's Module does not have: both
    named by the compiler, and the check fails (the stubs are not so loose that anything passes)."""
    src = tmp_path / "kotlin"
    shutil.copytree(APP / "app" / "src" / "main" / "kotlin", src)
    battery, runner = src / "dev/edgeprobe/app/BatteryMeter.kt", src / "dev/edgeprobe/app/ExecuTorchRunner.kt"
    b, r = battery.read_text(), runner.read_text()
    assert "getLongProperty(BatteryManager.BATTERY_PROPERTY_CURRENT_NOW)" in b and ".loadMethod(" in r
    battery.write_text(b.replace("getLongProperty(BatteryManager.BATTERY_PROPERTY_CURRENT_NOW)",
                                 'getLongProperty("current_now")'))
    runner.write_text(r.replace(".loadMethod(", ".loadMethodNamed(", 1))
    p = _app_check({"APP_SRC": str(src)})
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "app-check: FAILED" in out, out[-3000:]
    assert "BatteryMeter.kt" in out and "ExecuTorchRunner.kt" in out and "loadMethodNamed" in out, out[-3000:]
