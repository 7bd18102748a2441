"""The Python runner: the native runner's contract (../PROTOCOL.md) for runtimes that need Python.

`.ptl` runs on the TorchScript lite interpreter; `.pte` runs through ``executorch.runtime`` (a
fallback where the native runner is not built). The runtime is imported before the memory
baseline is read, so the baseline is this runner's own (interpreter + runtime), not the model's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

from edgeprobe_runner import __version__, meters
from edgeprobe_runner import vectors as epv

SCHEMA_VERSION = 1


class RunError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edgeprobe_runner", description="Measure one model file (PROTOCOL.md).",
                                allow_abbrev=False)
    p.add_argument("--model", required=True)
    p.add_argument("--vectors")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--min-seconds", type=float, default=0.0)
    p.add_argument("--idle-s", type=float, default=0.0, help="energy baseline: idle this long before the timed loop")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--atol", type=float, default=1e-3)
    p.add_argument("--etdump")
    p.add_argument("--method", default="forward")
    p.add_argument("--save-outputs")
    p.add_argument("--output")
    args = p.parse_args(argv)
    if args.warmup < 0 or args.iterations < 1 or args.min_seconds < 0 or args.threads < 0 or args.idle_s < 0:
        p.error("--warmup >= 0, --iterations >= 1, --min-seconds >= 0 and --threads >= 0 are required")
    return args


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _to_tensor(raw: epv.RawTensor):
    import torch

    if not raw.data:
        return torch.empty(raw.shape, dtype=_torch_dtype(raw.dtype))
    flat = torch.frombuffer(bytearray(raw.data), dtype=torch.uint8)
    return flat.view(_torch_dtype(raw.dtype)).reshape(raw.shape).clone()


def _to_raw(t) -> epv.RawTensor:
    import torch

    t = t.detach().contiguous()
    return epv.RawTensor(str(t.dtype).removeprefix("torch."), tuple(t.shape),
                         t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _compare(actual: Sequence[Any], expected: Sequence[epv.RawTensor], rtol: float, atol: float) -> tuple[Optional[str], float]:
    """None if every output is within |a-e| <= atol + rtol*|e|, else a message; and max |a-e|."""
    import torch

    if len(actual) != len(expected):
        return f"runtime returned {len(actual)} outputs, vectors expect {len(expected)}", math.inf
    worst = 0.0
    for i, (a, e_raw) in enumerate(zip(actual, expected)):
        e = _to_tensor(e_raw)
        if tuple(a.shape) != tuple(e.shape):
            return f"output {i} has shape {tuple(a.shape)}, expected {tuple(e.shape)}", math.inf
        if e.is_floating_point():
            a64, e64 = a.to(torch.float64), e.to(torch.float64)
            diff = (a64 - e64).abs()
            nan_mismatch = torch.isnan(a64) != torch.isnan(e64)
            diff = torch.where(torch.isnan(e64) & torch.isnan(a64), torch.zeros_like(diff), diff)
            err = float(diff.max()) if diff.numel() else 0.0
            worst = max(worst, err)
            bad = bool(nan_mismatch.any()) or bool((diff > atol + rtol * e64.abs()).any())
        else:
            bad = not torch.equal(a.to(e.dtype), e)
            err = 0.0 if not bad else math.inf
            worst = max(worst, err)
        if bad:
            return f"output {i} differs from the expected output (max |a-e| = {err:.3g}, atol={atol:.3g}, rtol={rtol:.3g})", worst
    return None, worst


class _Program:
    """A loaded model: ``run(inputs) -> list of output tensors``."""

    def __init__(self, run: Callable[[list], list], input_specs: list[tuple[str, tuple[int, ...]]]) -> None:
        self.run = run
        self.input_specs = input_specs


def _import_runtime(path: str) -> tuple[str, str]:
    """Import the runtime for this file kind before the baseline; return (runtime, version)."""
    from importlib import metadata

    if path.endswith(".ptl"):
        import torch  # noqa: F401
        import torch.jit.mobile  # noqa: F401

        return "torchscript_lite", metadata.version("torch")
    import executorch.runtime  # noqa: F401

    return "executorch", metadata.version("executorch")


def _load(path: str, method: str, threads: int) -> tuple[_Program, int]:
    import torch

    if path.endswith(".ptl"):
        if threads:
            torch.set_num_threads(threads)
        try:
            m = torch.jit.mobile._load_for_lite_interpreter(path)
        except Exception as exc:  # noqa: BLE001
            raise RunError("load_failed", f"cannot load {path} as TorchScript-Lite: {str(exc).splitlines()[0]}")
        fn = getattr(m, method) if method != "forward" else m

        def run_ptl(inputs: list) -> list:
            out = fn(*inputs)
            if isinstance(out, torch.Tensor):
                return [out]
            return list(out)

        return _Program(run_ptl, []), torch.get_num_threads()

    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    if threads:
        portable_lib._unsafe_reset_threadpool(threads)
    try:
        program = Runtime.get().load_program(path)
        loaded = program.load_method(method)
    except Exception as exc:  # noqa: BLE001
        raise RunError("load_failed", f"cannot load {path} method {method!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if loaded is None:
        raise RunError("load_failed", f"{path} has no method {method!r}")
    meta = loaded.metadata
    specs = []
    for i in range(meta.num_inputs()):
        tm = meta.input_tensor_meta(i)
        specs.append((str(tm.dtype()).removeprefix("ScalarType."), tuple(tm.sizes())))

    def run_pte(inputs: list) -> list:
        return list(loaded.execute(inputs))

    return _Program(run_pte, specs), int(portable_lib._threadpool_get_thread_count())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "status": "ok", "error": None,
        "runner": {"flavor": "python", "version": __version__, "runtime": None, "runtime_version": None},
        "artifact": {"path": args.model, "size_bytes": os.path.getsize(args.model) if os.path.exists(args.model) else None},
        "config": {"method": args.method, "warmup": args.warmup, "iterations": args.iterations,
                   "min_seconds": args.min_seconds, "threads_requested": args.threads, "threads_used": None,
                   "loader": "python", "etdump": bool(args.etdump)},
        "verification": None, "timing": None, "memory": None,
        "energy": {"available": False, "reason": "run ended before the timed loop"},
        "thermal": None, "environment": meters.environment(),
    }
    try:
        if not os.path.isfile(args.model):
            raise RunError("load_failed", f"model file {args.model} does not exist")
        if args.etdump:
            raise RunError("unsupported", "ETDump is written by the native runner only; drop --etdump or use it")
        runtime, version = _import_runtime(args.model)
        record["runner"].update(runtime=runtime, runtime_version=version)
        import torch

        # the high-water mark reset to the current RSS first: the baseline HWM is this runner's own
        # (interpreter + runtime), not a transient of the imports above
        reset_failed = meters.reset_hwm()
        base = meters.proc_status()
        thermal_before = meters.thermal_zones()
        record["memory"] = {"baseline_rss_bytes": base.get("VmRSS"), "baseline_hwm_bytes": base.get("VmHWM"),
                            "peak_rss_bytes": None, "swap_bytes": None, "source": "/proc/self/status VmHWM",
                            "hwm_reset": reset_failed is None,
                            "peak_rss_definition": meters.peak_rss_definition(reset_failed)}

        try:
            testsets = epv.read(args.vectors) if args.vectors else []
        except (OSError, epv.VectorsFormatError) as exc:
            raise RunError("bad_vectors", f"cannot read vectors {args.vectors}: {exc}")

        t0 = time.monotonic_ns()
        prog, threads_used = _load(args.model, args.method, args.threads)
        load_ms = (time.monotonic_ns() - t0) / 1e6
        record["config"]["threads_used"] = threads_used

        if testsets:
            inputs = [_to_tensor(t) for t in testsets[0].inputs]
        elif prog.input_specs:
            inputs = [torch.ones(shape, dtype=getattr(torch, _et_dtype(dt))) for dt, shape in prog.input_specs]
        else:
            raise RunError("bad_vectors", "a .ptl has no input metadata: pass --vectors")

        with torch.no_grad():
            t0 = time.monotonic_ns()
            try:
                outputs = prog.run(inputs)
            except Exception as exc:  # noqa: BLE001
                raise RunError("execute_failed", f"execute failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            first_ms = (time.monotonic_ns() - t0) / 1e6
            record["timing"] = {"load_ms": load_ms, "first_inference_ms": first_ms, "iteration_ns": []}
            if args.save_outputs:
                with open(args.save_outputs, "wb") as f:
                    epv.write(f, [epv.TestSet(tuple(_to_raw(t) for t in inputs), tuple(_to_raw(t) for t in outputs))])

            if testsets:
                worst_all = 0.0
                for idx, ts in enumerate(testsets):
                    actual = outputs if idx == 0 else prog.run([_to_tensor(t) for t in ts.inputs])
                    problem, worst = _compare(actual, ts.expected, args.rtol, args.atol)
                    worst_all = max(worst_all, worst)
                    if problem:
                        record["verification"] = {"checked": True, "passed": False, "testsets": len(testsets),
                                                  "rtol": args.rtol, "atol": args.atol, "max_abs_error": worst_all,
                                                  "reason": f"testset {idx}: {problem}"}
                        record["timing"] = None
                        raise RunError("output_mismatch", f"testset {idx}: {problem}")
                record["verification"] = {"checked": True, "passed": True, "testsets": len(testsets),
                                          "rtol": args.rtol, "atol": args.atol, "max_abs_error": worst_all, "reason": None}
            else:
                record["verification"] = {"checked": False, "passed": None, "testsets": 0, "rtol": None, "atol": None,
                                          "max_abs_error": None, "reason": "no test vectors given; inputs are ones"}

            for _ in range(args.warmup):
                prog.run(inputs)
            meter = meters.energy_meter()
            odpm = meters.Odpm()
            mark = odpm.snapshot if odpm.active else None  # ODPM snapshots at the window edges
            samples: list[int] = []
            timed_ns = 0
            meter.begin(args.idle_s, mark)
            while len(samples) < args.iterations or timed_ns < args.min_seconds * 1e9:
                t0 = time.monotonic_ns()
                prog.run(inputs)
                samples.append(time.monotonic_ns() - t0)
                timed_ns += samples[-1]
            record["energy"] = meter.end(mark)
            record["energy"]["odpm"] = odpm.block()
            record["timing"]["iteration_ns"] = samples

        status = meters.proc_status()
        record["memory"].update(peak_rss_bytes=status.get("VmHWM"), swap_bytes=status.get("VmSwap"))
        record["thermal"] = meters.thermal_block(thermal_before, meters.thermal_zones())
    except RunError as exc:
        record["status"] = "error"
        record["error"] = {"code": exc.code, "message": str(exc)}
        if exc.code != "output_mismatch" and record.get("timing") and not record["timing"].get("iteration_ns"):
            record["timing"] = None
    return record


def _et_dtype(name: str) -> str:
    """ExecuTorch ScalarType names (Float, Long, ...) -> torch dtype names."""
    return {"Float": "float32", "Double": "float64", "Half": "float16", "BFloat16": "bfloat16", "Long": "int64",
            "Int": "int32", "Short": "int16", "Char": "int8", "Byte": "uint8", "Bool": "bool"}.get(name, name.lower())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    record = measure(args)
    text = json.dumps(record)
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, args.output)
    else:
        sys.stdout.write(text + "\n")
    return 0
