"""Finding and building the native C++ runner (device_runner/native) for this host.

The runner is built with CMake against the ExecuTorch runtime libraries that the ``executorch``
wheel ships (its ``share/cmake``; the imported targets need CMake >= 3.28, installed from PyPI
as a dependency) and installed as a relocatable bundle: ``bin/edgeprobe_runner`` + ``lib/*.so``.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from edgeprobe.errors import RunnerError, RunnerNotBuiltError

BINARY = "edgeprobe_runner"
BUILD_HINT = "build it with `edgeprobe runner build` (or `make install`)"


def install_dir(machine: Optional[str] = None) -> Path:
    env = os.environ.get("EDGEPROBE_RUNNER_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("edgeprobe")) / "runner" / (machine or platform.machine())


def source_dir() -> Path:
    env = os.environ.get("EDGEPROBE_RUNNER_SRC")
    if env:
        return Path(env)
    import edgeprobe_runner

    return Path(edgeprobe_runner.__file__).resolve().parent.parent / "native"


def find_native_runner() -> Path:
    """The installed native runner binary, or RunnerNotBuiltError saying how to build it."""
    env = os.environ.get("EDGEPROBE_NATIVE_RUNNER")
    candidates = [Path(env)] if env else [install_dir() / "bin" / BINARY]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise RunnerNotBuiltError(f"native runner not found at {candidates[0]}; {BUILD_HINT}")


def executorch_cmake_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise RunnerError("the executorch package is not installed; install the pinned set (constraints.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / "share" / "cmake"
    if not (path / "executorch-config.cmake").is_file():
        raise RunnerError(f"{path} has no executorch-config.cmake; this executorch wheel ships no C++ runtime")
    return path


def _cmake() -> str:
    exe = Path(sys.executable).parent / "cmake"
    if exe.is_file():
        return str(exe)
    found = shutil.which("cmake")
    if not found:
        raise RunnerError("cmake not found; `pip install 'cmake>=3.28'`")
    return found


def build_native_runner(
    dest: Optional[Path] = None, *, jobs: int = 2, log: Callable[[str], None] = print
) -> Path:
    """Configure, build and install the native runner into ``dest``; returns the binary's path."""
    dest = Path(dest) if dest else install_dir()
    src = source_dir()
    if not (src / "CMakeLists.txt").is_file():
        raise RunnerError(f"native runner sources not found at {src} (set EDGEPROBE_RUNNER_SRC)")
    with tempfile.TemporaryDirectory(prefix="edgeprobe-runner-build-") as build:
        steps = [
            [_cmake(), "-S", str(src), "-B", build, "-DCMAKE_BUILD_TYPE=Release",
             f"-Dexecutorch_DIR={executorch_cmake_dir()}", f"-DCMAKE_INSTALL_PREFIX={dest}"],
            [_cmake(), "--build", build, "-j", str(jobs)],
            [_cmake(), "--install", build],
        ]
        for argv in steps:
            log("$ " + " ".join(argv))
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
                raise RunnerError(f"building the native runner failed at `{' '.join(argv[:2])}`:\n{tail}")
    binary = dest / "bin" / BINARY
    if not binary.is_file():
        raise RunnerError(f"the build finished but {binary} is missing; check device_runner/native/CMakeLists.txt install rules")
    return binary
