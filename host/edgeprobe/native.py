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


TARGETS = ("x86_64", "aarch64")
TOOLCHAINS = {"aarch64": "aarch64-linux-gnu.cmake"}  # device_runner/native/toolchains/
WHEEL_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}


def install_dir(machine: Optional[str] = None) -> Path:
    """Where the bundle for ``machine`` (default: this host) lives: ``$EDGEPROBE_RUNNER_DIR/<machine>``
    or the user data dir's ``runner/<machine>``."""
    env = os.environ.get("EDGEPROBE_RUNNER_DIR")
    import platformdirs

    root = Path(env) if env else Path(platformdirs.user_data_dir("edgeprobe")) / "runner"
    return root / (machine or platform.machine())


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


def target_executorch_cmake_dir(machine: str, log: Callable[[str], None] = print) -> Path:
    """share/cmake of the ``executorch`` wheel for ``machine``, same version as the installed one:
    downloaded once with ``pip download`` (no install) and unpacked into the user cache."""
    import importlib.metadata
    import zipfile

    import platformdirs

    version = importlib.metadata.version("executorch")
    root = Path(os.environ.get("EDGEPROBE_CACHE_DIR") or platformdirs.user_cache_dir("edgeprobe")) / "sdk"
    unpacked = root / f"executorch-{version}-{machine}"
    cmake_dir = unpacked / "executorch" / "share" / "cmake"
    if (cmake_dir / "executorch-config.cmake").is_file():
        return cmake_dir
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="edgeprobe-wheel-") as tmp:
        argv = [sys.executable, "-m", "pip", "download", f"executorch=={version}", "--no-deps", "--only-binary=:all:",
                "--platform", WHEEL_PLATFORMS[machine], "--python-version", py, "-d", tmp, "-q"]
        log("$ " + " ".join(argv))
        proc = subprocess.run(argv, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("executorch-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RunnerError(f"could not download the {machine} executorch {version} wheel (cp{py}): "
                              f"{(proc.stderr or proc.stdout).strip()[-400:]}")
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))  # renamed into place when complete
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(staging)
        if unpacked.exists():  # a half-unpacked leftover or a concurrent build
            shutil.rmtree(unpacked, ignore_errors=True)
        os.replace(staging, unpacked)
    if not (cmake_dir / "executorch-config.cmake").is_file():
        raise RunnerError(f"the {machine} executorch wheel has no share/cmake/executorch-config.cmake")
    return cmake_dir


def build_native_runner(
    dest: Optional[Path] = None, *, target: Optional[str] = None, jobs: int = 2, log: Callable[[str], None] = print
) -> Path:
    """Configure, build and install the native runner into ``dest``; returns the binary's path.

    ``target`` (``aarch64``) cross-builds with Debian's ``aarch64-linux-gnu-g++`` against the
    libraries of that platform's executorch wheel; default: this host.
    """
    host = platform.machine()
    target = target or host
    if target not in TARGETS:
        raise RunnerError(f"unknown runner target {target!r}; edgeprobe builds {', '.join(TARGETS)}")
    dest = Path(dest) if dest else install_dir(target)
    src = source_dir()
    if not (src / "CMakeLists.txt").is_file():
        raise RunnerError(f"native runner sources not found at {src} (set EDGEPROBE_RUNNER_SRC)")
    cross: list[str] = []
    if target != host:
        toolchain = src / "toolchains" / TOOLCHAINS.get(target, "")
        if target not in TOOLCHAINS or not toolchain.is_file():
            raise RunnerError(f"no toolchain file to cross-build for {target} on {host}")
        if not shutil.which(f"{target}-linux-gnu-g++"):
            raise RunnerError(f"cross compiler {target}-linux-gnu-g++ not found; on Debian/Ubuntu: "
                              f"apt-get install g++-{target.replace('_', '-')}-linux-gnu")
        cross = [f"-DCMAKE_TOOLCHAIN_FILE={toolchain}"]
        et_dir = target_executorch_cmake_dir(target, log)
    else:
        et_dir = executorch_cmake_dir()
    with tempfile.TemporaryDirectory(prefix="edgeprobe-runner-build-") as build:
        steps = [
            [_cmake(), "-S", str(src), "-B", build, "-DCMAKE_BUILD_TYPE=Release", *cross,
             f"-Dexecutorch_DIR={et_dir}", f"-DCMAKE_INSTALL_PREFIX={dest}"],
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
