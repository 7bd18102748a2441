"""Where a .pte spends its time inside XNNPACK, down to the instructions of the hottest loop.

Issue 15 found, on a 2-vCPU AMD EPYC without AVX-512, that the executorch 1.5.1 wheel's XNNPACK
(built with GCC 13.3.1) spills one accumulator of the f32 5x16 FMA3 IGEMM micro-kernel to the stack:
every FMA of the inner loop that reads ``0x..(%rsp)`` is a register the compiler ran out of. This
script shows which micro-kernel ran on *this* CPU and whether its loop spills:

1. runs the native runner on the model's fp32 .pte under ``perf record -e cpu-clock`` (a software
   clock: VMs here have no hardware counters);
2. takes the hottest sampled address inside ``libexecutorch_backend_xnnpack.so`` (the library is
   stripped of the micro-kernels' names, so addresses are all there is);
3. disassembles the innermost loop around it (from the target of the closing backward jump to the
   jump) with ``objdump``, and counts its FMAs, their register width (ymm: AVX2/FMA3, zmm: AVX-512)
   and how many take a stack operand (a spill).

    .venv/bin/python benchmarks/hot_loop.py [--model resnet18] [--threads 1] [--iterations 20]

Needs ``perf`` (linux-perf) and ``objdump`` (binutils). Prints Markdown.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import edgeprobe
from edgeprobe.native import find_native_runner

LIB = "libexecutorch_backend_xnnpack.so"


def hottest(perf_data: Path) -> tuple[dict[str, float], int, float]:
    """(share of samples per DSO, the hottest address in XNNPACK's library, its share)."""
    out = subprocess.run(["perf", "script", "-i", str(perf_data), "-F", "ip,dso", "--show-mmap-events"],
                         capture_output=True, text=True, check=True).stdout
    base = None
    ips: collections.Counter = collections.Counter()
    dsos: collections.Counter = collections.Counter()
    for line in out.splitlines():
        if "PERF_RECORD_MMAP" in line and LIB in line:
            m = re.search(r"\[(0x[0-9a-f]+)\((0x[0-9a-f]+)\) @ (0x[0-9a-f]+|0) ", line)
            if m and base is None:
                base = int(m.group(1), 16) - int(m.group(3), 16)
            continue
        m = re.match(r"\s*([0-9a-f]+)\s+\((.+)\)", line)
        if not m:
            continue
        dso = Path(m.group(2)).name
        dsos[dso] += 1
        if dso == LIB:
            ips[int(m.group(1), 16)] += 1
    total = sum(dsos.values())
    if not ips or base is None:
        raise SystemExit(f"no samples in {LIB}: {dict(dsos.most_common(5))}")
    ip, n = ips.most_common(1)[0]
    return {d: c / total for d, c in dsos.most_common(6)}, ip - base, n / total


def loop_around(lib: Path, offset: int) -> list[str]:
    """The innermost loop containing ``offset``: from a backward jump's target up to that jump."""
    lines = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={offset - 0x400}",
                            f"--stop-address={offset + 0x400}", str(lib)], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    insns = []
    for line in lines:
        m = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
        if m:
            insns.append((int(m.group(1), 16), m.group(2).strip()))
    best = None
    for addr, text in insns:
        m = re.match(r"j\w+\s+([0-9a-f]+)", text)
        if m and addr >= offset:
            target = int(m.group(1), 16)
            if target <= offset and (best is None or target > best[0]):
                best = (target, addr)
    if best is None:
        raise SystemExit(f"no loop found around {offset:#x}")
    return [f"{a:x}: {t}" for a, t in insns if best[0] <= a <= best[1]]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=20)
    args = ap.parse_args()
    art = edgeprobe.export(args.model)
    runner = find_native_runner()
    import importlib.util

    lib = Path(importlib.util.find_spec("executorch").submodule_search_locations[0]) / "lib" / LIB  # a namespace package
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-o", str(data), "--",
                        str(runner), "--model", str(art.model_path), "--vectors", str(art.vectors_path),
                        "--iterations", str(args.iterations), "--warmup", "2", "--threads", str(args.threads)],
                       check=True, capture_output=True)
        shares, offset, share = hottest(data)
    loop = loop_around(lib, offset)
    fmas = [t for t in loop if "vfmadd" in t or "vfnmadd" in t]
    spills = [t for t in fmas if "(%rsp)" in t]
    width = "zmm (AVX-512)" if any("%zmm" in t for t in fmas) else ("ymm (AVX2/FMA3)" if fmas else "none")
    comment = subprocess.run(["readelf", "-p", ".comment", str(lib)], capture_output=True, text=True).stdout
    compilers = sorted(set(re.findall(r"\]\s+(.+)", comment)))
    print(f"## Hottest XNNPACK loop: {args.model} fp32 .pte, {args.threads} thread(s)\n")
    print(f"- samples by library: " + ", ".join(f"{d} {100 * s:.0f} %" for d, s in shares.items()))
    print(f"- {LIB} built by: {'; '.join(compilers) or 'unknown (.comment empty)'}")
    print(f"- hottest address: {offset:#x} ({100 * share:.1f} % of all samples), in a loop of {len(loop)} "
          f"instructions: {len(fmas)} FMAs on {width}, {len(spills)} of them with a stack operand (spilled)\n")
    print("```")
    print("\n".join(loop))
    print("```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
