"""runner.build: which build of the runtime ran, from the ``.comment`` of its native library.

The reader (edgeprobe_runner/build_info.py; the native runner's elf_comment.h) is checked against binutils'
``readelf -p .comment`` on the installed wheels' real libraries, ELF64 and ELF32; the records of real
native and Python-runner runs name the compilers of the library each really loaded (on this machine's
pinned executorch 1.5.1 wheel: XNNPACK built by GCC 13.3.1, issue 15); a library without ``.comment``
gives null with a reason; records written before the field existed still load. Garbage and truncated
files: tests/test_fuzz_parsers.py (Python) and tests/test_native_fuzz.py (native)."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

import edgeprobe
from edgeprobe.results import BenchResult, RunnerInfo, RunRecord, RuntimeBuild, from_dict
from edgeprobe_runner import build_info

SITE = Path(sysconfig.get_paths()["purelib"])  # the venv's site-packages
XNNPACK_LIB = "libexecutorch_backend_xnnpack.so"
WHEEL_GCC = "GCC: (GNU) 13.3.1 20240611 (Red Hat 13.3.1-2)"  # executorch 1.5.1+cpu x86_64 (constraints.txt)


def _readelf(path: Path) -> list[str]:
    """The .comment strings as binutils prints them (``[offset]  text`` lines), distinct, in order."""
    p = subprocess.run(["readelf", "-p", ".comment", str(path)], capture_output=True, text=True, timeout=60)
    seen: list[str] = []
    for line in p.stdout.splitlines():
        m = re.match(r"\s*\[\s*[0-9a-f]+\]\s+(.*)$", line)
        if m and " ".join(m.group(1).split()) not in seen:
            seen.append(" ".join(m.group(1).split()))
    return seen


def _wheel_executorch() -> bool:
    import executorch.version

    return platform.machine() == "x86_64" and executorch.version.__version__ == "1.5.1+cpu"


@pytest.mark.parametrize("rel", ["executorch/lib/" + XNNPACK_LIB, "executorch/lib/libexecutorch_threadpool.so",
                                 "torch/lib/libtorch_cpu.so", "onnxruntime/capi"])
def test_reader_agrees_with_readelf(rel):
    path = SITE / rel
    if path.is_dir():
        path = next(path.glob("onnxruntime_pybind11_state*.so"))
    ours = build_info.comment_strings(str(path))
    assert ours and ours == _readelf(path)


def test_elf32_and_stripped(tmp_path):
    """An ELF32 object (objcopy's conversion of a gcc object) and a file with its .comment removed."""
    (tmp_path / "x.c").write_text("int f(void) { return 1; }\n")
    subprocess.run(["gcc", "-c", str(tmp_path / "x.c"), "-o", str(tmp_path / "x.o")], check=True, timeout=60)
    subprocess.run(["objcopy", "-O", "elf32-i386", str(tmp_path / "x.o"), str(tmp_path / "x32.o")], check=True)
    assert open(tmp_path / "x32.o", "rb").read(5)[4] == 1  # ELFCLASS32
    assert build_info.comment_strings(str(tmp_path / "x32.o")) == _readelf(tmp_path / "x32.o") != []
    subprocess.run(["objcopy", "--remove-section=.comment", str(tmp_path / "x.o"), str(tmp_path / "bare.o")], check=True)
    build, reason = build_info.build(str(tmp_path / "bare.o"))
    assert build is None and reason == "bare.o has no .comment section (stripped), so its compilers are unknown"


def _check_build(runner: RunnerInfo, library_prefix: str) -> None:
    assert runner.build_reason is None and runner.build is not None, runner
    assert runner.build.library.startswith(library_prefix) and runner.build.source == ".comment"
    lib = next(SITE.rglob(runner.build.library))
    assert list(runner.build.compilers) == _readelf(lib)


@pytest.fixture(scope="module")
def tiny_onnx(isolated_cache):
    return edgeprobe.export("tiny_cnn", format="onnx")


@pytest.fixture(scope="module")
def tiny_ptl(isolated_cache):
    return edgeprobe.export("tiny_cnn", format="ptl")


def test_python_runner_records_its_runtime_build(tiny_pte, tiny_onnx, tiny_ptl):
    for art, prefix in ((tiny_pte, "libexecutorch_backend_xnnpack"), (tiny_onnx, "onnxruntime_pybind11_state"),
                        (tiny_ptl, "libtorch_cpu")):
        r = edgeprobe.bench(art, device="local", runner="python", iterations=2, warmup=0)
        assert r.ok and r.run.runner.flavor == "python", r.run.error
        _check_build(r.run.runner, prefix)
        assert BenchResult.from_json(r.to_json()) == r
        if art is tiny_pte and _wheel_executorch():
            assert r.run.runner.build.compilers == (WHEEL_GCC,)


def test_native_runner_records_its_runtime_build(tiny_pte, native_runner):
    r = edgeprobe.bench(tiny_pte, device="local", runner="native", iterations=2, warmup=0)
    assert r.ok and r.run.runner.flavor == "native", r.run.error
    _check_build(r.run.runner, "libexecutorch_backend_xnnpack")
    assert r.run.runner.build.library == XNNPACK_LIB
    if _wheel_executorch():
        assert r.run.runner.build.compilers == (WHEEL_GCC,)
    assert BenchResult.from_json(r.to_json()) == r


def test_native_runner_with_a_stripped_library_says_why(tiny_pte, native_runner, tmp_path):
    """The bundle's XNNPACK library without its .comment still runs; the record says the build is unknown."""
    bundle = tmp_path / "bundle"
    shutil.copytree(native_runner.parent.parent, bundle)
    lib = bundle / "lib" / XNNPACK_LIB
    subprocess.run(["objcopy", "--remove-section=.comment", str(lib)], check=True, timeout=120)
    p = subprocess.run([str(bundle / "bin" / native_runner.name), "--model", str(tiny_pte.model_path),
                        "--vectors", str(tiny_pte.vectors_path), "--iterations", "1", "--warmup", "0"],
                       capture_output=True, text=True, timeout=120)
    rec = json.loads(p.stdout)
    assert rec["status"] == "ok", rec["error"]
    assert rec["runner"]["build"] is None
    assert rec["runner"]["build_reason"] == f"{XNNPACK_LIB} has no .comment section (stripped), so its compilers are unknown"
    assert RunRecord.from_runner_json(rec).runner.build_reason == rec["runner"]["build_reason"]


def test_records_without_the_field_still_load():
    old = {"flavor": "native", "version": "0.1.0", "runtime": "executorch", "runtime_version": "1.5.1"}
    assert from_dict(RunnerInfo, old).build is None and from_dict(RunnerInfo, old).build_reason is None
    new = from_dict(RunnerInfo, {**old, "build": {"library": XNNPACK_LIB, "compilers": [WHEEL_GCC], "source": ".comment"},
                                 "build_reason": None})
    assert new.build == RuntimeBuild(XNNPACK_LIB, (WHEEL_GCC,))
