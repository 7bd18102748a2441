"""The Python runner: the native runner's contract (../PROTOCOL.md) for runtimes that need Python.

Each runtime is a module of ``backends``, chosen by the model file's suffix (`.ptl` TorchScript lite,
`.onnx` ONNX Runtime, `.pte` ``executorch.runtime`` where the native runner is not built, and the
peer runtimes). The runtime is imported before the memory baseline is read, so the baseline is this
runner's own (interpreter + runtime), not the model's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from types import ModuleType
from typing import Any, Optional, Sequence

from edgeprobe_runner import __version__, backends, build_info, meters
from edgeprobe_runner import vectors as epv

SCHEMA_VERSION = 1


class RunError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class UsageError(Exception):
    """Bad arguments (PROTOCOL.md, "Exit code" 2): the usage on stderr and, with --output, a usage record."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - raise instead of exiting, so main can write the record
        raise UsageError(message)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The arguments; bad ones raise ``UsageError`` (``main`` turns it into exit 2 and a usage record)."""
    p = _Parser(prog="edgeprobe_runner", description="Measure one model file (PROTOCOL.md).", allow_abbrev=False)
    p.add_argument("--model", required=True)
    p.add_argument("--vectors")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--min-seconds", type=float, default=0.0)
    p.add_argument("--max-iterations", type=int, default=0, help="0: no cap; else the timed loop stops there")
    p.add_argument("--idle-s", type=float, default=0.0, help="energy baseline: idle this long before the timed loop")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--atol", type=float, default=1e-3)
    p.add_argument("--etdump")
    p.add_argument("--method", default="forward")
    p.add_argument("--save-outputs")
    p.add_argument("--output")
    args = p.parse_args(argv)
    for flag, value, low in (("--warmup", args.warmup, 0), ("--iterations", args.iterations, 1),
                             ("--min-seconds", args.min_seconds, 0), ("--idle-s", args.idle_s, 0),
                             ("--threads", args.threads, 0), ("--rtol", args.rtol, 0), ("--atol", args.atol, 0)):
        if not (math.isfinite(value) and value >= low):
            p.error(f"bad value for {flag}: {value!r} (want a finite number >= {low})")
    if args.max_iterations != 0 and args.max_iterations < args.iterations:
        p.error("--max-iterations must be 0 (no cap) or >= --iterations")
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
    """None if every output is within |a-e| <= atol + rtol*|e| (PROTOCOL.md: every dtype, integers too;
    NaN only where NaN is expected), else a message; and the largest |a-e| seen over the elements compared
    (0 when none were: a count, dtype or shape mismatch compares nothing), as the native runner reports it."""
    import torch

    if len(actual) != len(expected):
        return f"runtime returned {len(actual)} outputs, vectors expect {len(expected)}", 0.0
    worst = 0.0
    for i, (a, e_raw) in enumerate(zip(actual, expected)):
        e = _to_tensor(e_raw)
        if a.dtype != e.dtype:
            return (f"output {i} has dtype {str(a.dtype).removeprefix('torch.')}, expected "
                    f"{str(e.dtype).removeprefix('torch.')}"), worst
        if tuple(a.shape) != tuple(e.shape):
            return f"output {i} has shape {tuple(a.shape)}, expected {tuple(e.shape)}", worst
        a64, e64 = a.detach().to(torch.float64).reshape(-1), e.to(torch.float64).reshape(-1)
        nan_a, nan_e = torch.isnan(a64), torch.isnan(e64)
        both = ~nan_a & ~nan_e
        diff = (a64[both] - e64[both]).abs()
        if diff.numel():
            worst = max(worst, float(diff.max()))
        bad = bool((nan_a != nan_e).any()) or bool((diff > atol + rtol * e64[both].abs()).any())
        if bad:
            return f"output {i} differs from the expected output (max |a-e| = {worst:.3g}, atol={atol:.3g}, rtol={rtol:.3g})", worst
    return None, worst


def _finite(x: float) -> Optional[float]:
    """A number for the record: JSON has no inf or NaN (the native runner writes null for them)."""
    return x if math.isfinite(x) else None


def _import_runtime(path: str) -> tuple[backends.Backend, ModuleType, str]:
    """The backend for this file kind, its runtime imported before the baseline, and its version."""
    backend = backends.for_path(path)
    mod = backends.module(backend)
    try:
        return backend, mod, mod.import_runtime()
    except ImportError as exc:
        raise RunError("unsupported", f"a {backend.suffix} needs {backend.runtime} ({exc}): {backend.install}")


def _build(mod: ModuleType) -> dict[str, Any]:
    """``runner.build``: the compilers in the ``.comment`` of the runtime's main native library (the one
    loaded in this process), or null with ``build_reason`` (a backend without ``library_path``, a stripped
    or unreadable library)."""
    library_path = getattr(mod, "library_path", None)
    if library_path is None:
        return {"build": None, "build_reason": f"the {mod.RUNTIME} backend does not name its native library"}
    try:
        path = library_path()
    except Exception as exc:  # noqa: BLE001 - the record says why; the measurement goes on
        return {"build": None, "build_reason": _one_line(f"finding the {mod.RUNTIME} library failed: {exc}")}
    build, reason = build_info.build(path, f"no {mod.RUNTIME} native library found in this process")
    return {"build": build, "build_reason": reason}


def _load(mod: ModuleType, path: str, method: str, threads: int) -> backends.Loaded:
    try:
        return mod.load(path, method, threads)
    except backends.LoadError as exc:
        raise RunError("load_failed", str(exc))
    except backends.Unsupported as exc:
        raise RunError("unsupported", str(exc))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "status": "ok", "error": None,
        "runner": {"flavor": "python", "version": __version__, "runtime": None, "runtime_version": None,
                   "build": None, "build_reason": "the runtime could not be imported"},
        "artifact": {"path": args.model, "size_bytes": os.path.getsize(args.model) if os.path.exists(args.model) else None},
        "config": {"method": args.method, "warmup": args.warmup, "iterations": args.iterations,
                   "min_seconds": args.min_seconds,
                   "max_iterations": args.max_iterations or None, "threads_requested": args.threads, "threads_used": None,
                   "loader": "python", "etdump": bool(args.etdump)},
        "verification": None, "timing": None, "memory": None,
        "energy": {"available": False, "reason": "run ended before the timed loop"},
        "thermal": None, "environment": meters.environment(),
    }
    thermal_before: dict[str, float] = {}
    try:
        backend, mod, version = _import_runtime(args.model)
        record["runner"].update(runtime=backend.runtime, runtime_version=version, **_build(mod))
        import torch

        if hasattr(mod, "default_threads"):  # the runtime's default pool, as the native runner reports it before a load
            record["config"]["threads_used"] = mod.default_threads()

        # the high-water mark reset to the current RSS first: the baseline HWM is this runner's own
        # (interpreter + runtime), not a transient of the imports above
        reset_failed = meters.reset_hwm()
        base = meters.proc_status()
        thermal_before = meters.thermal_zones()
        record["memory"] = {"baseline_rss_bytes": base.get("VmRSS"), "baseline_hwm_bytes": base.get("VmHWM"),
                            "peak_rss_bytes": None, "swap_bytes": None, "source": "/proc/self/status VmHWM",
                            "hwm_reset": reset_failed is None,
                            "peak_rss_definition": meters.peak_rss_definition(reset_failed)}
        # checked after the baseline (step 1 comes first, PROTOCOL.md "Order of work"), as the native runner does
        if not os.path.isfile(args.model) or not os.access(args.model, os.R_OK):
            raise RunError("load_failed", f"model file {args.model} does not exist or is unreadable")
        if args.etdump:
            raise RunError("unsupported", "ETDump is written by the native runner only; drop --etdump or use it")

        try:
            testsets = epv.read(args.vectors) if args.vectors else []
        except (OSError, epv.VectorsFormatError) as exc:
            raise RunError("bad_vectors", f"cannot read vectors {args.vectors}: {exc}")

        t0 = time.monotonic_ns()
        prog = _load(mod, args.model, args.method, args.threads)
        load_ms = (time.monotonic_ns() - t0) / 1e6
        record["config"]["threads_used"] = prog.threads_used
        if prog.threads_note:
            record["config"]["threads_note"] = prog.threads_note

        if testsets:
            inputs = [_to_tensor(t) for t in testsets[0].inputs]
        elif prog.input_specs:
            inputs = [torch.ones(shape, dtype=getattr(torch, dt)) for dt, shape in prog.input_specs]
        else:
            raise RunError("bad_vectors", "this model has no static input metadata (a .ptl never has): pass --vectors")

        with torch.no_grad():
            t0 = time.monotonic_ns()
            try:
                outputs = prog.run(inputs)
            except Exception as exc:  # noqa: BLE001
                raise RunError("execute_failed", f"execute failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            first_ms = (time.monotonic_ns() - t0) / 1e6
            record["timing"] = {"load_ms": load_ms, "first_inference_ms": first_ms, "iteration_ns": []}
            if args.save_outputs:
                try:
                    with open(args.save_outputs, "wb") as f:
                        epv.write(f, [epv.TestSet(tuple(_to_raw(t) for t in inputs), tuple(_to_raw(t) for t in outputs))])
                except OSError as exc:
                    raise RunError("io_failed", f"cannot write {args.save_outputs}: {exc.strerror or exc}")

            if testsets:
                worst_all = 0.0
                for idx, ts in enumerate(testsets):
                    actual = outputs if idx == 0 else prog.run([_to_tensor(t) for t in ts.inputs])
                    problem, worst = _compare(actual, ts.expected, args.rtol, args.atol)
                    worst_all = max(worst_all, worst)
                    if problem:
                        record["verification"] = {"checked": True, "passed": False, "testsets": len(testsets),
                                                  "rtol": args.rtol, "atol": args.atol, "max_abs_error": _finite(worst_all),
                                                  "reason": f"testset {idx}: {problem}"}
                        record["timing"] = None
                        raise RunError("output_mismatch", f"testset {idx}: {problem}")
                record["verification"] = {"checked": True, "passed": True, "testsets": len(testsets),
                                          "rtol": args.rtol, "atol": args.atol, "max_abs_error": _finite(worst_all), "reason": None}
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
            while ((len(samples) < args.iterations or timed_ns < args.min_seconds * 1e9)
                   and (args.max_iterations == 0 or len(samples) < args.max_iterations)):
                t0 = time.monotonic_ns()
                prog.run(inputs)
                samples.append(time.monotonic_ns() - t0)
                timed_ns += samples[-1]
            record["energy"] = meter.end(mark)
            record["energy"]["odpm"] = odpm.block()
            record["timing"]["iteration_ns"] = samples
    except RunError as exc:
        record["status"] = "error"
        record["error"] = {"code": exc.code, "message": _one_line(str(exc))}
        if exc.code != "output_mismatch" and record.get("timing") and not record["timing"].get("iteration_ns"):
            record["timing"] = None
    if record["memory"] is not None:  # step 6, after a failed run too (the baseline was taken), as in the native runner
        status = meters.proc_status()
        record["memory"].update(peak_rss_bytes=status.get("VmHWM"), swap_bytes=status.get("VmSwap"))
        record["thermal"] = meters.thermal_block(thermal_before, meters.thermal_zones())
    return record


def _one_line(message: str) -> str:
    """Every error message in a record is one line (PROTOCOL.md)."""
    return " ".join(message.split()) or "(no message)"


def _usage_record(argv: Sequence[str], message: str) -> dict[str, Any]:
    """The record of a run refused for its arguments (code ``usage``): nothing was measured."""
    model = _flag_value(argv, "--model")
    backend = backends.for_path(model or "")
    try:
        from importlib import metadata

        if backend.runtime == "executorch":
            from edgeprobe_runner.backends import executorch

            version = executorch.version()
        else:
            version = metadata.version(backend.distribution)
    except Exception:  # noqa: BLE001  (not installed: the record says so with a null)
        version = None
    try:  # the library the runtime would load (as the native runner, which has it linked, names it)
        build = _build(backends.module(backend))
    except Exception as exc:  # noqa: BLE001
        build = {"build": None, "build_reason": _one_line(f"the {backend.runtime} backend cannot be imported: {exc}")}
    return {"schema_version": SCHEMA_VERSION, "status": "error", "error": {"code": "usage", "message": _one_line(message)},
            "runner": {"flavor": "python", "version": __version__, "runtime": backend.runtime, "runtime_version": version,
                       **build},
            "artifact": {"path": None, "size_bytes": None}, "config": None, "verification": None, "timing": None,
            "memory": None, "energy": None, "thermal": None, "environment": None}


def _flag_value(argv: Sequence[str], flag: str) -> Optional[str]:
    """The value of ``flag`` (``--flag V`` or ``--flag=V``, the last one wins) in an argv argparse refused."""
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a[len(flag) + 1:]
    return value


def _json_safe(v: Any) -> Any:
    """inf and NaN (not JSON) as null, as the native runner's JSON writer has them."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _write(path: Optional[str], record: dict[str, Any]) -> bool:
    """The record to ``path`` (atomically) or stdout; False (and why on stderr) when it cannot be written."""
    text = json.dumps(_json_safe(record), allow_nan=False) + "\n"  # strict JSON: no Infinity/NaN tokens
    if not path:
        sys.stdout.write(text)
        return True
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        print(f"edgeprobe_runner: cannot write {tmp}: {exc.strerror or exc}", file=sys.stderr)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit codes as in PROTOCOL.md: 0 a record was written (also an error record of a failed
    measurement), 1 an internal error (its record still written), 2 bad arguments (a usage record when
    --output was given), 3 the record could not be written."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from edgeprobe_runner.backends import executorch

    executorch.own_process = True
    try:
        args = parse_args(argv)
    except UsageError as exc:
        message = _one_line(str(exc))
        print(f"usage: edgeprobe_runner --model PATH [options] (see --help and PROTOCOL.md)\n"
              f"edgeprobe_runner: {message}", file=sys.stderr)
        output = _flag_value(argv, "--output")
        if output:
            _write(output, _usage_record(argv, message))
        return 2
    code = 0
    try:
        record = measure(args)
    except Exception as exc:  # noqa: BLE001  (an unexpected exception still ends in a record: internal_error)
        message = _one_line(f"{type(exc).__name__}: {exc}")
        print(f"edgeprobe_runner: internal error: {message}", file=sys.stderr)
        record = _usage_record(argv, message)
        record["error"]["code"] = "internal_error"
        record["artifact"] = {"path": args.model, "size_bytes": None}
        code = 1
    if not _write(args.output, record):
        return 3
    return code
