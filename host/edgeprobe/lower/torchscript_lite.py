"""TorchScript-Lite target: torch.jit.trace -> ``_save_for_lite_interpreter`` -> .ptl."""

from __future__ import annotations

from pathlib import Path

import torch

from edgeprobe.errors import LoweringError
from edgeprobe.fsutil import _fault_point
from edgeprobe.lower import Lowered, translate_export_error
from edgeprobe.models import ModelSpec

FILE_NAME = "model.ptl"


def lower(spec: ModelSpec, backend: str, out_dir: Path, notes: list[str]) -> Lowered:
    if spec.module is None:
        raise LoweringError("TorchScript-Lite needs an nn.Module; a .pt2 ExportedProgram cannot be traced to TorchScript")
    try:
        with torch.no_grad():
            scripted = torch.jit.trace(spec.module, spec.example_inputs, check_trace=False)
        scripted = _optimize_for_mobile(scripted.eval(), notes)
        scripted._save_for_lite_interpreter(str(out_dir / FILE_NAME))
    except Exception as exc:  # noqa: BLE001
        raise translate_export_error(spec, exc) from exc
    _fault_point("lower:model-written")
    return Lowered(FILE_NAME)


def _optimize_for_mobile(scripted: torch.jit.ScriptModule, notes: list[str]) -> torch.jit.ScriptModule:
    """Apply optimize_for_mobile where this torch build can; otherwise freeze and say why."""
    from torch.utils.mobile_optimizer import optimize_for_mobile

    try:
        optimized = optimize_for_mobile(scripted)
        notes.append("optimize_for_mobile applied")
        return optimized
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())
        if "XNNPACK" in reason:
            reason = "this torch build has no XNNPACK (USE_XNNPACK=0), which its rewrite passes need"
        notes.append(f"optimize_for_mobile skipped: {reason}; the .ptl runs the frozen TorchScript graph")
        return torch.jit.freeze(scripted)
