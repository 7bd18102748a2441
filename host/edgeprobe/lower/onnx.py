"""ONNX target: the model's ExportedProgram -> ``torch.onnx.export(dynamo=True, opset 18)`` -> .onnx.

The graph exported is ``spec.program()``, the one export the cache key hashes and ExecuTorch
lowers, so the .onnx, .pte and .ptl of a model come from the same graph. The weights are kept
inside the one file (``external_data=False``): an artifact is one model file that the device path
pushes and checks by sha256. The exporter's console chatter is captured (a ``--json`` stdout must
stay JSON) and its last line kept in the notes when it said anything.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from edgeprobe.errors import LoweringError
from edgeprobe.fsutil import _fault_point
from edgeprobe.lower import Lowered, translate_export_error
from edgeprobe.models import ModelSpec

FILE_NAME = "model.onnx"
OPSET_VERSION = 18
INSTALL_HINT = "pip install edgeprobe[onnx]"


def lower(spec: ModelSpec, backend: str, out_dir: Path, notes: list[str]) -> Lowered:
    import torch

    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it; say so before exporting
    except ImportError as exc:
        raise LoweringError(f"the ONNX exporter needs onnxscript ({exc}): {INSTALL_HINT}") from None
    try:
        program = spec.program()
    except Exception as exc:  # noqa: BLE001
        raise translate_export_error(spec, exc) from exc
    chatter = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            torch.onnx.export(program, spec.example_inputs, str(out_dir / FILE_NAME), dynamo=True,
                              opset_version=OPSET_VERSION, external_data=False, verbose=False)
    except Exception as exc:  # noqa: BLE001
        raise translate_export_error(spec, exc) from exc
    said = [line.strip() for line in chatter.getvalue().splitlines() if line.strip()]
    notes.append(f"torch.onnx.export (dynamo, opset {OPSET_VERSION}); weights inside the .onnx"
                 + (f"; exporter said: {said[-1][:200]}" if said else ""))
    _fault_point("lower:model-written")
    return Lowered(FILE_NAME)
