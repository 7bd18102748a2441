"""Tool versions recorded with every artifact and result (importlib.metadata: no heavy imports)."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

__version__ = "0.1.0"


@functools.lru_cache(maxsize=None)
def tool_versions() -> dict[str, str]:
    out = {"edgeprobe": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "executorch", "torchao"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# The packages a lowering target adds to the record beyond the common ones (its exporter and runtime):
# they key its artifacts in the cache, so an upgrade of the exporter lowers again.
TARGET_DISTS: dict[str, tuple[str, ...]] = {"onnxruntime": ("onnx", "onnxscript", "onnxruntime"),
                                            "openvino": ("openvino", "nncf"), "ncnn": ("ncnn", "pnnx"),
                                            "litert": ("ai-edge-litert",)}


def target_versions(target: str) -> dict[str, str]:
    """The versions of ``target``'s own packages (empty for targets that need none beyond torch)."""
    out = {}
    for dist in TARGET_DISTS.get(target, ()):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    if target == "litert":  # its converter runs in an environment of its own: that one's versions too
        from edgeprobe.lower.litert import converter_versions

        out.update(converter_versions())
    return out
