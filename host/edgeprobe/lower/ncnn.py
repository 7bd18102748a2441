"""ncnn target: the model's nn.Module -> TorchScript trace -> pnnx -> ncnn .param/.bin, fp32, in one tar.

pnnx converts from a TorchScript trace (not from an ExportedProgram), so this target traces
``spec.module`` (or the unlifted ``spec.program()`` when the spec has no module) on
``spec.example_inputs``. pnnx writes fp16 weights unless told ``fp16=0``: this is the fp32
target, so it is always told, and the test checks the .bin holds 4 bytes a weight.

The artifact is one file, ``model.ncnn.tar`` (uncompressed, written with stdlib ``tarfile``,
fixed mtimes and owners so the same conversion gives the same sha256): the ``.ncnn.param`` and
``.ncnn.bin`` pnnx wrote, and ``io.json`` with the input and output blob names, dtypes and full
shapes. ncnn's Mat has no batch dimension; the runner gives each output its exact shape back from
io.json, so the runner's shape check stays strict. pnnx runs in a private temporary directory (it
writes a .pt, .pnnx.param/.bin/.onnx, two .py files and may compile a .so); only the two ncnn
files are kept. Its console output is captured (a ``--json`` stdout must stay JSON).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
import warnings
from pathlib import Path

from edgeprobe.errors import LoweringError
from edgeprobe.fsutil import _fault_point
from edgeprobe.lower import Lowered, translate_export_error
from edgeprobe.models import ModelSpec

FILE_NAME = "model.ncnn.tar"
PARAM_NAME = "model.ncnn.param"  # the members of the tar, as the runner's backend reads them
BIN_NAME = "model.ncnn.bin"
IO_NAME = "io.json"
INSTALL_HINT = "pip install edgeprobe[ncnn]"
PNNX_TIMEOUT_S = 900
_WORRYING = ("warn", "error", "not supported", "unsupported", "fallback", "ignore")


def _tensor_io(names: list[str], tensors: tuple) -> list[dict]:
    return [{"name": n, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
            for n, t in zip(names, tensors)]


def _check_tensors(spec: ModelSpec, what: str, tensors: tuple) -> None:
    """ncnn's Mat holds float32 here and has no batch dimension: refuse what it cannot carry, before work."""
    import torch

    for i, t in enumerate(tensors):
        if t.dtype != torch.float32:
            raise LoweringError(f"lowering {spec.ref} to ncnn: {what} {i} is {str(t.dtype).removeprefix('torch.')}; "
                                "the ncnn target carries float32 tensors only")
        if t.dim() < 2 or t.dim() > 5 or t.shape[0] != 1:
            raise LoweringError(f"lowering {spec.ref} to ncnn: {what} {i} has shape {tuple(t.shape)}; ncnn's Mat has "
                                "no batch dimension, so the ncnn target takes tensors of shape (1, ...) with 1 to 4 "
                                "dimensions after the batch (use --input-shape 1,...)")


def _pnnx(spec: ModelSpec, work: Path) -> tuple[str, str]:
    """Trace and convert inside ``work``; (pnnx's console output, pnnx's version)."""
    import torch
    import pnnx
    from pnnx.utils.utils import generate_inputs_arg, get_shape_from_inputs, get_type_from_inputs

    module = spec.module if spec.module is not None else spec.program().module()
    chatter = io.StringIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(chatter), \
            contextlib.redirect_stderr(chatter):
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
        traced = torch.jit.trace(module, spec.example_inputs, check_trace=False)
    traced.save(str(work / "model.pt"))
    inputs = list(spec.example_inputs)
    shapes = generate_inputs_arg(get_shape_from_inputs(inputs), get_type_from_inputs(inputs))
    # The command line pnnx.convert builds, run here instead of through pnnx.export: pnnx.export lets
    # the converter's stderr through to ours and ignores its exit status, and then imports the .py it
    # generated; this captures both streams and checks the status.
    cmd = [pnnx.EXEC_PATH, "model.pt", f"inputshape={shapes}", "device=cpu", "optlevel=2", "fp16=0",
           f"ncnnparam={PARAM_NAME}", f"ncnnbin={BIN_NAME}"]
    try:
        p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LoweringError(f"lowering {spec.ref} to ncnn: pnnx did not finish in {PNNX_TIMEOUT_S} s") from None
    said = chatter.getvalue() + p.stdout + p.stderr
    if p.returncode != 0 or not (work / PARAM_NAME).is_file() or not (work / BIN_NAME).is_file():
        lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if "error" in ln.lower() or "not supported" in ln.lower()),
                   lines[-1] if lines else "no output")
        raise LoweringError(f"lowering {spec.ref} to ncnn failed in pnnx (exit {p.returncode}): {why[:300]}")
    return said, getattr(pnnx, "__version__", "unknown")


def _blob_names(spec: ModelSpec, param: Path, n_in: int, n_out: int) -> tuple[list[str], list[str]]:
    """The blobs ncnn itself reads from the .param: pnnx names them in0.. and out0.. in the model's order.
    An operator pnnx left unconverted makes ncnn refuse the .param here, on the host, not on the device."""
    import ncnn

    net = ncnn.Net()
    if net.load_param(str(param)) != 0:
        layers = [ln.split()[0] for ln in param.read_text().splitlines()[2:] if ln.split()]
        odd = sorted({t for t in layers if "." in t or ":" in t})  # pnnx.* / torch.* / aten::*: no ncnn layer
        raise LoweringError(f"lowering {spec.ref} to ncnn: ncnn cannot load the .param pnnx wrote"
                            + (f" (no ncnn layer for {', '.join(odd[:5])})" if odd else ""))
    ins, outs = [f"in{i}" for i in range(n_in)], [f"out{i}" for i in range(n_out)]
    if sorted(net.input_names()) != sorted(ins) or sorted(net.output_names()) != sorted(outs):
        raise LoweringError(f"lowering {spec.ref} to ncnn: pnnx's graph has inputs {list(net.input_names())} and "
                            f"outputs {list(net.output_names())}; the model has {n_in} inputs and {n_out} outputs")
    return ins, outs


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed: the same conversion, the same sha256
    tar.addfile(info, io.BytesIO(data))


def lower(spec: ModelSpec, backend: str, out_dir: Path, notes: list[str]) -> Lowered:
    try:
        import ncnn  # noqa: F401
        import pnnx  # noqa: F401
    except ImportError as exc:
        raise LoweringError(f"the ncnn target needs pnnx and ncnn ({exc}): {INSTALL_HINT}") from None
    _check_tensors(spec, "input", spec.example_inputs)
    expected = spec.eager_outputs(spec.example_inputs)
    _check_tensors(spec, "output", expected)
    with tempfile.TemporaryDirectory(prefix="edgeprobe-pnnx-") as tmp:
        work = Path(tmp)
        try:
            said, version = _pnnx(spec, work)
        except LoweringError:
            raise
        except Exception as exc:  # noqa: BLE001  (torch.jit.trace's own errors: a model pnnx cannot take)
            raise translate_export_error(spec, exc) from exc
        ins, outs = _blob_names(spec, work / PARAM_NAME, len(spec.example_inputs), len(expected))
        meta = {"inputs": _tensor_io(ins, spec.example_inputs), "outputs": _tensor_io(outs, expected),
                "weights": "fp32", "converter": f"pnnx {version}"}
        with tarfile.open(out_dir / FILE_NAME, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name in (PARAM_NAME, BIN_NAME):
                _add(tar, name, (work / name).read_bytes())
            _add(tar, IO_NAME, (json.dumps(meta, indent=1) + "\n").encode())
        bin_bytes = os.path.getsize(work / BIN_NAME)
    # pnnx echoes its arguments and passes; only what sounds like a warning is worth a note
    warned = [ln.strip() for ln in said.splitlines() if any(w in ln.lower() for w in _WORRYING)]
    notes.append(f"torch.jit.trace -> pnnx {version} (optlevel 2, fp16=0: fp32 weights, {bin_bytes} bytes of .bin) -> "
                 f"ncnn .param/.bin in {FILE_NAME} with {IO_NAME}"
                 + (f"; pnnx said: {warned[-1][:200]}" if warned else ""))
    _fault_point("lower:model-written")
    return Lowered(FILE_NAME)
