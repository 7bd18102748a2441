"""Finding and building the native C++ runner (device_runner/native) for this host.

The runner is built with CMake against the ExecuTorch runtime libraries that the ``executorch``
wheel ships (its ``share/cmake``; the imported targets need CMake >= 3.28, installed from PyPI
as a dependency) and installed as a relocatable bundle: ``bin/edgeprobe_runner`` + ``lib/*.so``
+ ``bundle.json`` (the sha256 of every file in bin/ and lib/).

The install never touches the live bundle: ``cmake --install`` writes a staging directory beside
it, the bundle manifest is written there last, and the staging directory is swapped in atomically
(``fsutil.replace_dir``). Before the runner is used here or pushed to a device, the bundle is
checked against its manifest (``verify_bundle``); a bundle without one (built by an older
edgeprobe, or half-written) is refused with the rebuild hint.

``$EDGEPROBE_NATIVE_RUNNER`` is an explicit override: a binary inside a bundle that has a
``bundle.json`` (``<bundle>/bin/edgeprobe_runner``) is verified like any bundle; a bare binary
with no manifest beside it is the user's own build and is used as given.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from edgeprobe.errors import RunnerError, RunnerNotBuiltError, UsageError
from edgeprobe.fsutil import (_fault_point, atomic_write_text, fsync_tree, locked, make_temp_dir, remove_leftovers,
                              replace_dir, sha256_file)

BINARY = "edgeprobe_runner"
BUILD_HINT = "build it with `edgeprobe runner build` (or `make install`)"
BUNDLE_MANIFEST = "bundle.json"
BUNDLE_SCHEMA_VERSION = 1
BUNDLE_DIRS = ("bin", "lib")


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


def _rebuild_hint(bundle: Path) -> str:
    machine = bundle.name if bundle.name in TARGETS else platform.machine()
    target = "" if machine == platform.machine() else f" --target {machine}"
    return f"rebuild with `edgeprobe runner build{target}`"




def _bundle_files(bundle: Path) -> list[str]:
    """Relative paths of the files under bin/ and lib/ (what a deployment pushes)."""
    found = []
    for d in BUNDLE_DIRS:
        for p in sorted((bundle / d).rglob("*")) if (bundle / d).is_dir() else []:
            if p.is_file():
                found.append(p.relative_to(bundle).as_posix())
    return found


def write_bundle_manifest(bundle: Path, machine: str) -> Path:
    """``bundle.json``: the sha256 of every file in bin/ and lib/; written last, atomically."""
    files = {rel: sha256_file(bundle / rel) for rel in _bundle_files(bundle)}
    doc = {"schema_version": BUNDLE_SCHEMA_VERSION, "machine": machine, "binary": f"bin/{BINARY}", "files": files,
           "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    return atomic_write_text(bundle / BUNDLE_MANIFEST, json.dumps(doc, indent=2) + "\n", fault="runner-manifest")


_VERIFIED: dict[str, tuple[tuple, dict[str, str]]] = {}  # bundle -> (stat signature, files) already checked


def _signature(bundle: Path, rels: list[str]) -> tuple:
    def sig(p: Path) -> tuple:
        st = p.stat()
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    return (sig(bundle / BUNDLE_MANIFEST), *((rel, *sig(bundle / rel)) for rel in rels))


def verify_bundle(bundle: Path) -> dict[str, str]:
    """Every file of the bundle (relative path -> sha256) after checking them against ``bundle.json``.

    RunnerNotBuiltError with the rebuild hint when the manifest is missing or unreadable, a file is
    missing, changed or not listed. A bundle already verified in this process is not hashed again
    while none of its files changed (inode, size, mtime)."""
    bundle = Path(bundle)
    hint = _rebuild_hint(bundle)
    mpath = bundle / BUNDLE_MANIFEST
    if not mpath.is_file():
        raise RunnerNotBuiltError(f"the native runner bundle at {bundle} has no {BUNDLE_MANIFEST} (built by an older "
                                  f"edgeprobe, or its install was interrupted), so it cannot be verified; {hint}")
    try:
        doc = json.loads(mpath.read_text())
        files = doc["files"]
        if doc.get("schema_version") != BUNDLE_SCHEMA_VERSION or not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError(f"schema_version {doc.get('schema_version')!r}, expected {BUNDLE_SCHEMA_VERSION}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RunnerNotBuiltError(f"{mpath} is unreadable ({exc}); {hint}") from None
    on_disk = _bundle_files(bundle)
    missing = sorted(set(files) - set(on_disk))
    extra = sorted(set(on_disk) - set(files))
    if f"bin/{BINARY}" not in files or missing or extra:
        what = (f"{', '.join(missing or [f'bin/{BINARY}'])} missing" if missing or f"bin/{BINARY}" not in files
                else f"{', '.join(extra)} not in its manifest")
        raise RunnerNotBuiltError(f"the native runner bundle at {bundle} is incomplete ({what}); {hint}")
    try:
        sig = _signature(bundle, on_disk)
    except OSError as exc:
        raise RunnerNotBuiltError(f"cannot read the native runner bundle at {bundle} ({exc}); {hint}") from None
    seen = _VERIFIED.get(str(bundle))
    if seen is not None and seen[0] == sig:
        return dict(seen[1])
    for rel in on_disk:
        if sha256_file(bundle / rel) != files[rel]:
            raise RunnerNotBuiltError(f"{bundle / rel} does not match the sha256 in {mpath} (half-written or "
                                      f"changed since the build); {hint}")
    if not os.access(bundle / "bin" / BINARY, os.X_OK):
        raise RunnerNotBuiltError(f"{bundle / 'bin' / BINARY} is not executable; {hint}")
    _VERIFIED[str(bundle)] = (sig, dict(files))
    return dict(files)


def find_native_runner() -> Path:
    """The native runner binary of a verified bundle, or RunnerNotBuiltError saying how to (re)build it.

    ``$EDGEPROBE_NATIVE_RUNNER`` overrides: verified when it sits in a bundle with a manifest,
    used as given when it is a bare binary (the user's own build)."""
    env = os.environ.get("EDGEPROBE_NATIVE_RUNNER")
    if env:
        c = Path(env)
        if not (c.is_file() and os.access(c, os.X_OK)):
            raise RunnerNotBuiltError(f"native runner not found at {c} (EDGEPROBE_NATIVE_RUNNER); point it at an "
                                      f"executable or unset it and {BUILD_HINT}")
        if c.parent.name == "bin" and (c.parent.parent / BUNDLE_MANIFEST).is_file():
            verify_bundle(c.parent.parent)
        return c
    bundle = install_dir()
    binary = bundle / "bin" / BINARY
    if not binary.is_file():
        raise RunnerNotBuiltError(f"native runner not found at {binary}; {BUILD_HINT}")
    verify_bundle(bundle)
    return binary


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


def _check_dest(dest: Path) -> None:
    """The install replaces ``dest`` as a whole: allow a new or empty directory or a runner bundle
    (with a manifest, or an older bundle of only bin/ + lib/ with the runner in it), nothing else."""
    if os.path.lexists(dest) and not dest.is_dir():
        raise UsageError(f"--dest {dest} is a file; name a new directory for the runner bundle")
    if not dest.is_dir() or not any(dest.iterdir()):
        return
    names = {p.name for p in dest.iterdir()}
    if (dest / BUNDLE_MANIFEST).is_file() or (
            names <= {*BUNDLE_DIRS, BUNDLE_MANIFEST} and (dest / "bin" / BINARY).is_file()):
        return
    raise UsageError(f"--dest {dest} is not empty and is not a runner bundle (bin/{BINARY}, lib/, {BUNDLE_MANIFEST}); "
                     "the install replaces its destination as a whole: name a new or empty directory")


def _run_step(argv: list[str], log: Callable[[str], None]) -> None:
    log("$ " + " ".join(argv))
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise RunnerError(f"building the native runner failed at `{' '.join(argv[:2])}`:\n{tail}")


def configure_and_build(build_dir: Path, *, target: Optional[str] = None, jobs: int = 2,
                        log: Callable[[str], None] = print) -> None:
    """Configure and compile the native runner for ``target`` in ``build_dir`` (no install)."""
    host = platform.machine()
    target = target or host
    if target not in TARGETS:
        raise RunnerError(f"unknown runner target {target!r}; edgeprobe builds {', '.join(TARGETS)}")
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
    _run_step([_cmake(), "-S", str(src), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", *cross,
               f"-Dexecutorch_DIR={et_dir}"], log)
    _run_step([_cmake(), "--build", str(build_dir), "-j", str(jobs)], log)


def install_native_runner(build_dir: Path, dest: Path, *, target: Optional[str] = None,
                          log: Callable[[str], None] = print) -> Path:
    """Install a built tree as the bundle ``dest``, atomically; returns the binary's path.

    ``cmake --install`` writes a staging directory beside ``dest``; the bundle manifest is written
    there last; then the staging directory is swapped in. A kill at any point leaves the previous
    bundle (or none) at ``dest``, never a half-written one."""
    dest = Path(dest)
    _check_dest(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(dest.parent / f".{dest.name}.lock"):
        remove_leftovers(dest, ".staging-", ".old-")  # of killed installs: the lock says none is live
        staging = make_temp_dir(dest, ".staging-")
        try:
            _run_step([_cmake(), "--install", str(build_dir), "--prefix", str(staging)], log)
            _fault_point("runner:installed")
            if not (staging / "bin" / BINARY).is_file():
                raise RunnerError(f"the build finished but bin/{BINARY} was not installed; check "
                                  "device_runner/native/CMakeLists.txt install rules")
            write_bundle_manifest(staging, target or platform.machine())
            fsync_tree(staging)
            _fault_point("runner:manifest-written")
            _check_dest(dest)  # still replaceable now that the lock is held
            replace_dir(staging, dest, fault="runner")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _VERIFIED.pop(str(dest), None)
    return dest / "bin" / BINARY


def build_native_runner(
    dest: Optional[Path] = None, *, target: Optional[str] = None, jobs: int = 2, log: Callable[[str], None] = print,
    build_dir: Optional[Path] = None,
) -> Path:
    """Configure, build and install the native runner into ``dest``; returns the binary's path.

    ``target`` (``aarch64``) cross-builds with Debian's ``aarch64-linux-gnu-g++`` against the
    libraries of that platform's executorch wheel; default: this host. ``build_dir``: a build tree
    to keep (incremental rebuilds); default: a temporary one. ``dest`` must be new, empty or a
    runner bundle (it is replaced as a whole, see ``install_native_runner``)."""
    target = target or platform.machine()
    dest = Path(dest) if dest else install_dir(target)
    _check_dest(dest)  # before minutes of compiling
    if build_dir is not None:
        Path(build_dir).mkdir(parents=True, exist_ok=True)
        configure_and_build(Path(build_dir), target=target, jobs=jobs, log=log)
        return install_native_runner(Path(build_dir), dest, target=target, log=log)
    with tempfile.TemporaryDirectory(prefix="edgeprobe-runner-build-") as build:
        configure_and_build(Path(build), target=target, jobs=jobs, log=log)
        return install_native_runner(Path(build), dest, target=target, log=log)
