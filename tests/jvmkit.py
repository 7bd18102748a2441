"""The JVM build of android_app's core, for the tests: its jar, its JUnit run, and its runner server
as a subprocess shaped like ``RunnerServer`` (``port``, ``service``, ``workdir``) so that the
adversarial helpers of tests/test_wire_security.py can be pointed at it.

The jar is built by ``make android-core`` (kotlinc from npm, Debian's libandroid-json-java); tests
that need it are ``real_peer("jvm")``: they skip without it, and fail under CI=true."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "android_app"
JAR = APP / "build" / "edgeprobe-core.jar"
CORE_SOURCES = APP / "core" / "src" / "main"


def require_jar() -> Path:
    """The core jar, built from the sources as they are now; skip (a failure under CI=true) otherwise."""
    if shutil.which("java") is None:
        pytest.skip("no java on PATH (apt-get install openjdk-17-jdk-headless)")
    if not JAR.is_file():
        pytest.skip(f"{JAR.relative_to(ROOT)} is not built (make android-core)")
    newest = max((p.stat().st_mtime for p in CORE_SOURCES.rglob("*.kt")), default=0.0)
    if JAR.stat().st_mtime < newest:  # a stale jar would test yesterday's server
        pytest.fail(f"{JAR.relative_to(ROOT)} is older than core's sources: run make android-core")
    return JAR


@dataclass(frozen=True)
class JUnitRun:
    passed: int
    failed: int
    skipped: int
    failures: tuple[str, ...]  # "Class.method: message" of each failed or erroring test
    output: str


def run_junit(timeout_s: float = 600) -> JUnitRun:
    """Compile core's tests and run them with JUnit 5's console launcher (android_app/tools/build.sh
    test); the counts come from its XML reports, not from its exit code alone."""
    p = subprocess.run(["bash", str(APP / "tools" / "build.sh"), "test"], capture_output=True, text=True,
                       timeout=timeout_s)
    reports = sorted((APP / "build" / "test-results").glob("TEST-*.xml"))
    if not reports:
        raise AssertionError(f"JUnit wrote no report (exit {p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")
    passed = failed = skipped = 0
    failures: list[str] = []
    for report in reports:
        for case in ET.parse(report).getroot().iter("testcase"):
            name = f"{case.get('classname', '?').rsplit('.', 1)[-1]}.{case.get('name', '?')}"
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                failed += 1
                failures.append(f"{name}: {(bad.get('message') or bad.text or '').strip().splitlines()[:1]}")
            elif case.find("skipped") is not None:
                skipped += 1
            else:
                passed += 1
    if p.returncode != 0 and not failed:
        raise AssertionError(f"JUnit exited {p.returncode} with no failed test:\n{(p.stdout + p.stderr)[-4000:]}")
    return JUnitRun(passed, failed, skipped, tuple(failures), p.stdout + p.stderr)


class JvmCoreServer:
    """``java -jar edgeprobe-core.jar serve ...`` on loopback, with the limits given as its flags."""

    service = "runner"

    def __init__(self, workdir: Path, token_file: Path, *, native_runner: Optional[Path] = None,
                 name: str = "jvm-core", flags: Optional[dict[str, object]] = None,
                 env: Optional[dict[str, str]] = None) -> None:
        argv = ["java", "-jar", str(require_jar()), "serve", "--host", "127.0.0.1", "--port", "0",
                "--token-file", str(token_file), "--workdir", str(workdir), "--name", name]
        if native_runner is not None:
            argv += ["--native-runner", str(native_runner)]
        for flag, value in (flags or {}).items():
            argv += [f"--{flag.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise AssertionError(f"the JVM core server did not start (exit {self.proc.returncode}): "
                                 f"{self.proc.stderr.read()[-3000:]}")
        self.listening = json.loads(line)
        self.port = int(self.listening["listening"].rsplit(":", 1)[1])
        self.workdir = Path(self.listening["workdir"]).resolve()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "JvmCoreServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
