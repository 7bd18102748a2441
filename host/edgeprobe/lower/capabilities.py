"""Which lowering target supports which backend and format: a table, failures as rows.

Checked before any work, so an unsupported combination is a clear error, not a late crash. A row
whose runtime is an optional extra (``requires``) is decided when it is read (``table``, ``resolve``),
so the table imports without those packages and says how to install them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from typing import Optional

from edgeprobe.errors import UnsupportedCombinationError


@dataclass(frozen=True)
class Capability:
    target: str
    format: str
    backend: str
    supported: bool
    reason: Optional[str] = None
    requires: tuple[str, ...] = ()  # modules that must be importable, else the row is unsupported
    install: Optional[str] = None  # what to run when one is missing
    probe: Optional[str] = None  # "module:function" -> why the row is unavailable here, or None (beyond modules)


TABLE: tuple[Capability, ...] = (
    Capability("executorch", "pte", "xnnpack", True),
    Capability("executorch", "pte", "portable", True),
    Capability("executorch", "pte", "vulkan", False,
               "the executorch wheel's runtime ships no Vulkan delegate; build ExecuTorch with the Vulkan SDK"),
    Capability("executorch", "pte", "qnn", False,
               "needs the Qualcomm QNN SDK (QNN_SDK_ROOT), which is not installed"),
    Capability("executorch", "pte", "coreml", False,
               "Core ML runs on Apple devices only; the Linux runtime has no Core ML delegate"),
    Capability("torchscript_lite", "ptl", "cpu", True),
    Capability("onnxruntime", "onnx", "cpu", True, requires=("onnxruntime", "onnxscript", "onnx"),
               install="pip install edgeprobe[onnx]"),
    Capability("openvino", "openvino", "cpu", True, requires=("openvino", "nncf"),
               install="pip install edgeprobe[openvino]"),
    Capability("ncnn", "ncnn", "cpu", True, requires=("ncnn", "pnnx"), install="pip install edgeprobe[ncnn]"),
    Capability("litert", "tflite", "xnnpack", True, requires=("ai_edge_litert",), install="pip install edgeprobe[litert]",
               probe="edgeprobe.lower.litert:converter_missing"),
)

DEFAULT_BACKEND = {"pte": "xnnpack", "ptl": "cpu", "onnx": "cpu", "openvino": "cpu", "ncnn": "cpu", "tflite": "xnnpack"}
FORMATS = tuple(sorted(DEFAULT_BACKEND))


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def checked(cap: Capability) -> Capability:
    """``cap`` as it stands here: unsupported, with the install hint, when a required module is missing
    or its probe says why not."""
    missing = [m for m in cap.requires if _missing(m)]
    if cap.supported and missing:
        return replace(cap, supported=False, reason=f"{', '.join(missing)} not installed: {cap.install}")
    if cap.supported and cap.probe:
        module, function = cap.probe.split(":")
        why = getattr(importlib.import_module(module), function)()
        if why:
            return replace(cap, supported=False, reason=why)
    return cap


def table() -> tuple[Capability, ...]:
    """Every row, optional runtimes decided now."""
    return tuple(checked(c) for c in TABLE)


def resolve(format: str = "pte", backend: Optional[str] = None) -> Capability:
    """The table row for (format, backend); raises UnsupportedCombinationError with the reason."""
    if format not in DEFAULT_BACKEND:
        raise UnsupportedCombinationError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    backend = backend or DEFAULT_BACKEND[format]
    for cap in TABLE:
        if cap.format == format and cap.backend == backend:
            cap = checked(cap)
            if not cap.supported:
                raise UnsupportedCombinationError(f"--format {format} --backend {backend} is not available: {cap.reason}")
            return cap
    valid = ", ".join(c.backend for c in TABLE if c.format == format and c.supported)
    raise UnsupportedCombinationError(
        f"--format {format} does not support --backend {backend}; supported backends for {format}: {valid}"
    )
