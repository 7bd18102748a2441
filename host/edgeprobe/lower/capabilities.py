"""Which lowering target supports which backend and format: a table, failures as rows.

Checked before any work, so an unsupported combination is a clear error, not a late crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgeprobe.errors import UnsupportedCombinationError


@dataclass(frozen=True)
class Capability:
    target: str
    format: str
    backend: str
    supported: bool
    reason: Optional[str] = None


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
)

DEFAULT_BACKEND = {"pte": "xnnpack", "ptl": "cpu"}
FORMATS = tuple(sorted(DEFAULT_BACKEND))


def resolve(format: str = "pte", backend: Optional[str] = None) -> Capability:
    """The table row for (format, backend); raises UnsupportedCombinationError with the reason."""
    if format not in DEFAULT_BACKEND:
        raise UnsupportedCombinationError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    backend = backend or DEFAULT_BACKEND[format]
    for cap in TABLE:
        if cap.format == format and cap.backend == backend:
            if not cap.supported:
                raise UnsupportedCombinationError(f"--format {format} --backend {backend} is not available: {cap.reason}")
            return cap
    valid = ", ".join(c.backend for c in TABLE if c.format == format and c.supported)
    raise UnsupportedCombinationError(
        f"--format {format} does not support --backend {backend}; supported backends for {format}: {valid}"
    )
