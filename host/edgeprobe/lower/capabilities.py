"""Which lowering target supports which backend and format: a table, failures as rows.

Checked before any work, so an unsupported combination is a clear error, not a late crash. A row
whose runtime is an optional extra (``requires``) is decided when it is read (``table``, ``resolve``),
so the table imports without those packages and says how to install them.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Optional

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


# -- backends a device brings itself ---------------------------------------------------------------
# A .pte for one of these lowers only for a device that says it runs it: a tcp device (the edgeprobe
# Android app) whose info lists the delegate in ``delegates``. Elsewhere the row's own reason stands.
# The value is the module that lowers for it (a row ``requires`` it once the device allows it).
DEVICE_DELEGATES = {"vulkan": "executorch.backends.vulkan.partitioner.vulkan_partitioner"}


@dataclass(frozen=True)
class TargetDevice:
    """What a capability decision knows of the device that will run the artifact."""

    id: str
    transport: str  # the transport's kind: tcp, adb, local, mock
    delegates: frozenset[str] = frozenset()

    @classmethod
    def of(cls, device_id: str, transport: str, info: Mapping[str, object]) -> "TargetDevice":
        """From a transport's ``info()``: ``delegates`` is comma-separated (core's RunnerServer.info)."""
        raw = str(info.get("delegates") or "")
        return cls(device_id, transport, frozenset(d.strip() for d in raw.split(",") if d.strip()))


_TARGET: ContextVar[Optional[TargetDevice]] = ContextVar("edgeprobe_lowering_target", default=None)


@contextmanager
def lowering_for(device: Optional[TargetDevice]) -> Iterator[None]:
    """Inside this block ``resolve`` (also the one ``lower`` calls) decides for ``device``: bench
    lowers for the device it has opened."""
    token = _TARGET.set(device)
    try:
        yield
    finally:
        _TARGET.reset(token)


def device_dependent(format: str, backend: Optional[str]) -> bool:
    """Whether (format, backend) is decided by the target device (a delegate it brings)."""
    return format == "pte" and backend in DEVICE_DELEGATES


def for_device(cap: Capability, device: Optional[TargetDevice]) -> Capability:
    """``cap`` for ``device``: a device-delegate row is supported where a tcp device lists the delegate
    (then it needs the partitioner's module here); for any other device it keeps its reason and says
    which delegates that device lists."""
    if cap.supported or device is None or not device_dependent(cap.format, cap.backend):
        return cap
    if device.transport == "tcp" and cap.backend in device.delegates:
        return replace(cap, supported=True, reason=None, requires=(DEVICE_DELEGATES[cap.backend],),
                       install="pip install executorch (its wheel carries the partitioner)")
    listed = ", ".join(sorted(device.delegates)) or "none"
    return replace(cap, reason=f"{cap.reason}; or bench on an edgeprobe app that lists the {cap.backend} delegate "
                               f"(its {cap.backend} flavour; {device.id} lists delegates: {listed})")


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


def resolve(format: str = "pte", backend: Optional[str] = None, device: Optional[TargetDevice] = None) -> Capability:
    """The table row for (format, backend) on ``device`` (default: the one of ``lowering_for``, if
    any); raises UnsupportedCombinationError with the reason."""
    if format not in DEFAULT_BACKEND:
        raise UnsupportedCombinationError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    backend = backend or DEFAULT_BACKEND[format]
    device = device if device is not None else _TARGET.get()
    for cap in TABLE:
        if cap.format == format and cap.backend == backend:
            cap = checked(for_device(cap, device))
            if not cap.supported:
                raise UnsupportedCombinationError(f"--format {format} --backend {backend} is not available: {cap.reason}")
            return cap
    valid = ", ".join(c.backend for c in TABLE if c.format == format and c.supported)
    raise UnsupportedCombinationError(
        f"--format {format} does not support --backend {backend}; supported backends for {format}: {valid}"
    )
