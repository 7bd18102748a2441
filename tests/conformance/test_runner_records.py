"""Both runners, one contract (device_runner/PROTOCOL.md): the same cases through the native and the
Python runner, and the same records out of them.

Every case is run once per runner (all of them at the first request, in parallel: the Python runner's
start-up, importing torch and ExecuTorch, is most of this suite's time) and checked twice: against the
contract (``test_contract[runner-case]``: exit code, error code, record shape) and against the other
runner (``test_same_record[case]``: the same key set recursively, the same type per key, the same
deterministic values). Timings are compared in structure only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from .conftest import RUNNERS, _native_binary, require_native, run_runner

ITEMS = {"float32": 4}


# ----------------------------------------------------------------------------------------- case files


@dataclass
class Files:
    """The inputs of every case, written once per session from the tiny .pte and its passing .epv."""

    dir: Path
    model: Path
    vectors: Path
    extra: dict[str, Path] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Path:
        try:
            return self.__dict__["extra"][name]
        except KeyError:
            raise AttributeError(name) from None


def _write_epv(path: Path, testsets) -> Path:
    from edgeprobe_runner import vectors as epv

    with open(path, "wb") as f:
        epv.write(f, testsets)
    return path


@pytest.fixture(scope="session")
def files(tiny_pte, tmp_path_factory) -> Files:
    import torch
    from edgeprobe_runner import vectors as epv

    d = tmp_path_factory.mktemp("conformance-cases")
    model, vectors = d / "model.pte", d / "vectors.epv"
    shutil.copyfile(tiny_pte.model_path, model)
    shutil.copyfile(tiny_pte.vectors_path, vectors)
    f = Files(d, model, vectors)
    mb, vb = model.read_bytes(), vectors.read_bytes()
    (ts,) = epv.read(str(vectors))
    x, y = ts.inputs[0], ts.expected[0]
    assert x.dtype == y.dtype == "float32" and len(ts.inputs) == len(ts.expected) == 1

    f.extra["truncated_pte"] = d / "truncated.pte"
    f.truncated_pte.write_bytes(mb[: len(mb) // 2])
    f.extra["zeroed_pte"] = d / "zeroed.pte"
    f.zeroed_pte.write_bytes(b"\0" * len(mb))
    wrong = epv.RawTensor("float32", y.shape, torch.full(y.shape, 7.0).numpy().tobytes())
    f.extra["mismatch_epv"] = _write_epv(d / "mismatch.epv", [epv.TestSet(ts.inputs, (wrong,))])
    f.extra["two_outputs_epv"] = _write_epv(d / "two-outputs.epv", [epv.TestSet(ts.inputs, (y, y))])
    # the second test set is the one that does not match: every test set is checked, not the first only
    f.extra["second_set_mismatch_epv"] = _write_epv(d / "second.epv", [ts, epv.TestSet(ts.inputs, (wrong,))])
    f.extra["two_sets_epv"] = _write_epv(d / "two-sets.epv", [ts, ts])
    f.extra["truncated_epv"] = d / "truncated.epv"
    f.truncated_epv.write_bytes(vb[:-7])
    f.extra["bad_magic_epv"] = d / "bad-magic.epv"
    f.bad_magic_epv.write_bytes(b"EPVEC999" + vb[8:])
    f.extra["trailing_epv"] = d / "trailing.epv"
    f.trailing_epv.write_bytes(vb + b"junk")
    f.extra["huge_count_epv"] = d / "huge-count.epv"
    f.huge_count_epv.write_bytes(b"EPVEC001" + struct.pack("<I", 2**32 - 1))
    half = (*x.shape[:-2], x.shape[-2] // 2, x.shape[-1])
    f.extra["wrong_shape_epv"] = _write_epv(d / "wrong-shape.epv", [epv.TestSet(
        (epv.RawTensor("float32", half, torch.ones(half).numpy().tobytes()),), ts.expected)])
    f.extra["wrong_dtype_epv"] = _write_epv(d / "wrong-dtype.epv", [epv.TestSet(
        (epv.RawTensor("float64", x.shape, torch.ones(x.shape, dtype=torch.float64).numpy().tobytes()),), ts.expected)])
    f.extra["out"] = d / "out"
    f.out.mkdir()
    return f


# ------------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    """``args(files, out_dir)``: the runner's arguments (``--output`` is added unless ``output`` is
    False); ``code``: the record's error code (None: an ok record); ``exit``; ``record``: whether a
    record must be at ``--output``."""

    name: str
    args: Callable[[Files, Path], list]
    code: Optional[str] = None
    exit: int = 0
    record: bool = True
    output: bool = True
    output_path: Optional[Callable[[Path], Path]] = None


def _v(f: Files, vectors: Optional[Path] = None) -> list:
    return ["--model", f.model, "--vectors", vectors or f.vectors]


CASES = [
    # good: a tiny .pte and its passing .epv
    Case("ok_vectors", lambda f, o: [*_v(f), "--warmup", 1, "--iterations", 3]),
    Case("ok_threads_1_tolerances", lambda f, o: [*_v(f), "--warmup", 0, "--iterations", 4, "--threads", 1,
                                                  "--rtol", 0.01, "--atol", 0.0001, "--method", "forward"]),
    Case("ok_two_testsets", lambda f, o: [*_v(f, f.two_sets_epv), "--warmup", 0, "--iterations", 2]),
    Case("ok_inputs_of_ones", lambda f, o: ["--model", f.model, "--warmup", 0, "--iterations", 2]),
    # --min-seconds 60 would time for a minute: the cap ends the loop at 5 (both runners, the same count)
    Case("ok_max_iterations_caps_min_seconds", lambda f, o: [*_v(f), "--warmup", 0, "--iterations", 2,
                                                             "--min-seconds", 60, "--max-iterations", 5]),
    Case("ok_save_outputs", lambda f, o: [*_v(f), "--warmup", 0, "--iterations", 1, "--save-outputs", o / "saved.epv"]),
    # bad inputs: an error record (exit 0), the same code from both
    Case("missing_model", lambda f, o: ["--model", f.dir / "no-such.pte", "--iterations", 1], "load_failed"),
    Case("truncated_pte", lambda f, o: [*_v(f), "--model", f.truncated_pte, "--iterations", 1], "load_failed"),
    Case("zeroed_pte", lambda f, o: [*_v(f), "--model", f.zeroed_pte, "--iterations", 1], "load_failed"),
    Case("unknown_method", lambda f, o: [*_v(f), "--method", "no_such_method", "--iterations", 1], "load_failed"),
    Case("output_mismatch", lambda f, o: [*_v(f, f.mismatch_epv), "--iterations", 1], "output_mismatch"),
    Case("output_count_mismatch", lambda f, o: [*_v(f, f.two_outputs_epv), "--iterations", 1], "output_mismatch"),
    Case("second_testset_mismatch", lambda f, o: [*_v(f, f.second_set_mismatch_epv), "--iterations", 1],
         "output_mismatch"),
    Case("truncated_epv", lambda f, o: [*_v(f, f.truncated_epv), "--iterations", 1], "bad_vectors"),
    Case("bad_magic_epv", lambda f, o: [*_v(f, f.bad_magic_epv), "--iterations", 1], "bad_vectors"),
    Case("trailing_bytes_epv", lambda f, o: [*_v(f, f.trailing_epv), "--iterations", 1], "bad_vectors"),
    Case("huge_count_epv", lambda f, o: [*_v(f, f.huge_count_epv), "--iterations", 1], "bad_vectors"),
    Case("missing_epv", lambda f, o: [*_v(f, f.dir / "no-such.epv"), "--iterations", 1], "bad_vectors"),
    Case("wrong_shape_input", lambda f, o: [*_v(f, f.wrong_shape_epv), "--iterations", 1], "execute_failed"),
    Case("wrong_dtype_input", lambda f, o: [*_v(f, f.wrong_dtype_epv), "--iterations", 1], "execute_failed"),
    Case("save_outputs_unwritable", lambda f, o: [*_v(f), "--iterations", 1, "--save-outputs",
                                                  f.dir / "no-such-dir" / "saved.epv"], "io_failed"),
    # usage errors: exit 2, a usage record at --output
    Case("iterations_0", lambda f, o: [*_v(f), "--iterations", 0], "usage", 2),
    Case("warmup_negative", lambda f, o: [*_v(f), "--warmup", -1], "usage", 2),
    Case("iterations_not_a_number", lambda f, o: [*_v(f), "--iterations", "x"], "usage", 2),
    Case("threads_fractional", lambda f, o: [*_v(f), "--threads", "2.5"], "usage", 2),
    Case("max_iterations_below_iterations", lambda f, o: [*_v(f), "--iterations", 5, "--max-iterations", 3],
         "usage", 2),
    Case("rtol_nan", lambda f, o: [*_v(f), "--rtol", "nan"], "usage", 2),
    Case("unknown_flag", lambda f, o: [*_v(f), "--bogus", 1], "usage", 2),
    Case("usage_without_output", lambda f, o: [*_v(f), "--iterations", 0], None, 2, record=False, output=False),
    # the record cannot be written: exit 3, nothing at --output
    Case("unwritable_output", lambda f, o: [*_v(f), "--iterations", 1], None, 3, record=False,
         output_path=lambda o: o / "no-such-dir" / "record.json"),
]
BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES)

# native-side discrepancies against PROTOCOL.md: case name -> reason (xfail, strict)
NATIVE_XFAIL: dict[str, str] = {}


# ------------------------------------------------------------------------------------------ the runs


@dataclass
class Outcome:
    runner: str
    case: Case
    exit: int
    stdout: str
    stderr: str
    output: Path
    record: Optional[dict]
    out_dir: Path


class Runs:
    """Every (runner, case) run once; all submitted at the first request (in parallel)."""

    def __init__(self, files: Files) -> None:
        self.files = files
        self._futures: dict[tuple[str, str], Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(2, min(6, (os.cpu_count() or 2) + 1)))

    def _run(self, runner: str, case: Case) -> Outcome:
        out_dir = self.files.out / f"{runner}-{case.name}"
        out_dir.mkdir(parents=True, exist_ok=True)
        output = case.output_path(out_dir) if case.output_path else out_dir / "record.json"
        args = case.args(self.files, out_dir)
        if case.output:
            args = [*args, "--output", output]
        p = run_runner(runner, args)
        record = json.loads(output.read_text()) if output.exists() else None
        return Outcome(runner, case, p.returncode, p.stdout, p.stderr, output, record, out_dir)

    def _submit_all(self) -> None:
        runners = [r for r in RUNNERS if r == "python" or _native_binary() is not None]
        for case in CASES:  # python first: its runs are the slow ones
            for runner in sorted(runners, key=lambda r: r != "python"):
                self._futures[(runner, case.name)] = self._pool.submit(self._run, runner, case)

    def get(self, runner: str, name: str) -> Outcome:
        if runner == "native":
            require_native()
        with self._lock:
            if not self._futures:
                self._submit_all()
        return self._futures[(runner, name)].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def runs(files):
    r = Runs(files)
    yield r
    r.close()


def _params(with_runner: bool):
    out = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=NATIVE_XFAIL[case.name])] if case.name in NATIVE_XFAIL else []
        if with_runner:
            out += [pytest.param(r, case.name, id=f"{r}-{case.name}", marks=marks if r == "native" else [])
                    for r in RUNNERS]
        else:
            out.append(pytest.param(case.name, id=case.name, marks=marks))
    return out


# ------------------------------------------------------------------------------------- the contract


def _one_line(message: Any) -> None:
    assert isinstance(message, str) and message and "\n" not in message and "\r" not in message, message


@pytest.mark.parametrize("runner,name", _params(True))
def test_contract(runs, runner, name):
    """One runner against PROTOCOL.md: the exit code, the record (or none), its error code."""
    from edgeprobe.results import RunRecord

    o = runs.get(runner, name)
    case = o.case
    assert o.exit == case.exit, (o.exit, o.record and o.record.get("error"), o.stderr[-1500:])
    if not case.record:
        assert o.record is None and not o.output.exists()
        assert not Path(str(o.output) + ".tmp").exists(), "a half-written record was left behind"
        assert o.stderr.strip(), "exit 2/3 says why on stderr"
        if not case.output:
            assert not o.stdout.strip(), "a refused run writes no record to stdout"
        return
    rec = o.record
    assert rec is not None, f"no record at --output (exit {o.exit}): {o.stderr[-1500:]}"
    assert rec["schema_version"] == 1
    assert rec["runner"]["flavor"] == runner
    if case.code is None:
        assert rec["status"] == "ok" and rec["error"] is None, rec["error"]
    else:
        assert rec["status"] == "error" and rec["error"]["code"] == case.code, rec["error"]
        _one_line(rec["error"]["message"])
    if case.code == "usage":
        assert o.stderr.strip(), "a usage error says why on stderr"
        return
    run = RunRecord.from_runner_json(rec)  # the host reads it
    assert run.status == rec["status"] and (run.error is None) == (case.code is None)
    if case.code is None:
        args = [str(a) for a in case.args(runs.files, o.out_dir)]
        iterations = int(args[args.index("--iterations") + 1])
        cap = int(args[args.index("--max-iterations") + 1]) if "--max-iterations" in args else None
        assert len(rec["timing"]["iteration_ns"]) == (cap or iterations)
        assert all(isinstance(ns, int) and ns > 0 for ns in rec["timing"]["iteration_ns"])
        assert rec["config"]["iterations"] == iterations and rec["config"]["max_iterations"] == cap
        v = rec["verification"]
        if "--vectors" in args:
            assert v["checked"] is True and v["passed"] is True and v["reason"] is None
            assert 0 <= v["max_abs_error"] <= v["atol"] + 1e-3
        else:
            assert v["checked"] is False and v["passed"] is None and isinstance(v["reason"], str) and v["reason"]
        for block in ("energy", "thermal"):
            b = rec[block]
            assert b["available"] in (True, False)
            if not b["available"]:
                _one_line(b["reason"])
    if case.code == "output_mismatch":
        v = rec["verification"]
        assert v["checked"] is True and v["passed"] is False and rec["timing"] is None
        _one_line(v["reason"])


# ---------------------------------------------------------------------------------- runner vs runner


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _unmeasured(block: Any) -> bool:
    """A block that says why it has no value: ``available`` false (or absent) and a reason string."""
    return isinstance(block, dict) and block.get("available") is not True and isinstance(block.get("reason"), str) \
        and bool(block.get("reason"))


def structure_diff(a: Any, b: Any, path: str = "", parent_a: Any = None, parent_b: Any = None) -> list[str]:
    """Where two records differ in shape: keys (recursively), and the JSON type of each value. A
    null against a number is allowed only inside a block that documents, in the null's record, why it
    could not measure (``available: false`` + ``reason``)."""
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        if ka == "null" and _unmeasured(parent_a) or kb == "null" and _unmeasured(parent_b):
            return []
        return [f"{path or '<record>'}: {ka} ({json.dumps(a)[:80]}) vs {kb} ({json.dumps(b)[:80]})"]
    out: list[str] = []
    if ka == "object":
        for k in sorted(set(a) | set(b)):
            p = f"{path}.{k}" if path else k
            if k not in a or k not in b:
                out.append(f"{p}: only in {'the first' if k in a else 'the second'} record")
            else:
                out += structure_diff(a[k], b[k], p, a, b)
    elif ka == "list" and a and b:  # element shapes (lists of numbers: the first element is enough)
        for i, (x, y) in enumerate(zip(a, b)):
            out += structure_diff(x, y, f"{path}[{i}]", a, b)
            if _kind(x) not in ("object", "list"):
                break
    return out


# the values both flavors must give alike (None: compared as a key path that may be absent in both)
DETERMINISTIC = [
    ("schema_version",), ("status",), ("error", "code"), ("runner", "runtime"), ("runner", "runtime_version"),
    ("runner", "version"),
    ("artifact", "path"), ("artifact", "size_bytes"),
    ("config", "method"), ("config", "warmup"), ("config", "iterations"), ("config", "min_seconds"),
    ("config", "max_iterations"), ("config", "threads_requested"), ("config", "threads_used"), ("config", "etdump"),
    ("verification", "checked"), ("verification", "passed"), ("verification", "testsets"),
    ("verification", "rtol"), ("verification", "atol"),
    ("memory", "source"), ("memory", "hwm_reset"), ("memory", "peak_rss_definition"),
    ("energy", "available"), ("energy", "meter"), ("thermal", "available"),
    ("environment", "os"), ("environment", "kernel"), ("environment", "machine"), ("environment", "cpu_model"),
    ("environment", "cores"), ("environment", "hostname"),
]


def _get(rec: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        if not isinstance(rec, dict):
            return None
        rec = rec.get(k)
    return rec


@pytest.mark.parametrize("name", _params(False))
def test_same_record(runs, name):
    """Native and Python: the same exit code, the same record structure and the same deterministic values."""
    n, p = runs.get("native", name), runs.get("python", name)
    assert n.exit == p.exit, (n.exit, p.exit, n.stderr[-800:], p.stderr[-800:])
    assert (n.record is None) == (p.record is None)
    if n.record is None:
        return
    diff = structure_diff(n.record, p.record)
    assert not diff, "native (first) vs python (second) record structure:\n" + "\n".join(diff)
    unequal = {".".join(k): (_get(n.record, k), _get(p.record, k)) for k in DETERMINISTIC
               if _get(n.record, k) != _get(p.record, k)}
    assert not unequal, f"native vs python values: {unequal}"
    nv, pv = n.record["verification"], p.record["verification"]
    if nv and pv and nv.get("max_abs_error") is not None:
        # the same computation on the same inputs: the same error, to rounding of the float32 kernels
        assert math.isclose(nv["max_abs_error"], pv["max_abs_error"], rel_tol=1e-3, abs_tol=1e-6), (nv, pv)
    if n.record["timing"] and p.record["timing"]:
        assert len(n.record["timing"]["iteration_ns"]) == len(p.record["timing"]["iteration_ns"])


def test_structure_diff_itself():
    a = {"x": 1, "e": {"available": False, "reason": "no meter", "j": None}, "l": [1, 2]}
    assert structure_diff(a, {"x": 2.5, "e": {"available": False, "reason": "r", "j": None}, "l": [3]}) == []
    assert structure_diff(a, {**a, "x": None})  # a bare null for a number is a difference
    assert structure_diff(a, {**a, "e": {"available": False, "reason": "r", "j": 1.0}}) == []  # documented null
    assert structure_diff(a, {**a, "y": 1}) == ["y: only in the second record"]
    assert structure_diff(a, {**a, "l": ["s"]})


# ----------------------------------------------------------------------------------------- save-outputs


def test_save_outputs_read_back_alike(runs, files):
    """--save-outputs: both write an .epv the Python reader reads back to the same tensors: the
    inputs exactly as given, the outputs within the check's tolerance of each other and of the vectors."""
    import torch
    from edgeprobe_runner import vectors as epv

    def tensors(raws):
        return [torch.frombuffer(bytearray(t.data), dtype=getattr(torch, t.dtype)).reshape(t.shape) for t in raws]

    (want,) = epv.read(str(files.vectors))
    saved = {}
    for runner in RUNNERS:
        o = runs.get(runner, "ok_save_outputs")
        assert o.record and o.record["status"] == "ok", (runner, o.record and o.record["error"], o.stderr[-800:])
        sets = epv.read(str(o.out_dir / "saved.epv"))
        assert len(sets) == 1, runner
        (ts,) = sets
        assert [(t.dtype, t.shape) for t in ts.inputs] == [(t.dtype, t.shape) for t in want.inputs], runner
        assert [t.data for t in ts.inputs] == [t.data for t in want.inputs], f"{runner}: the inputs changed"
        assert [(t.dtype, t.shape) for t in ts.expected] == [(t.dtype, t.shape) for t in want.expected], runner
        for got, exp in zip(tensors(ts.expected), tensors(want.expected), strict=True):
            torch.testing.assert_close(got, exp, rtol=1e-3, atol=1e-3)
        saved[runner] = tensors(ts.expected)
    for a, b in zip(saved["native"], saved["python"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
