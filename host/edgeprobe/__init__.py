"""edgeprobe: lower PyTorch models for edge devices and measure them there, honestly.

Public API (heavy imports happen on first use)::

    edgeprobe.bench(model, device="local", ...) -> BenchResult
    edgeprobe.export(model, format="pte", backend="xnnpack") -> Artifact
    edgeprobe.profile(model, device="local") -> ProfileReport
    edgeprobe.list_devices() -> list[DeviceInfo]
    edgeprobe.BenchResult.load(path)
"""

from __future__ import annotations

from typing import Any

from edgeprobe.results import BenchResult, LatencyStats, SCHEMA_VERSION
from edgeprobe.versions import __version__

__all__ = ["__version__", "bench", "export", "profile", "list_devices", "BenchResult", "LatencyStats", "SCHEMA_VERSION"]


def __getattr__(name: str) -> Any:
    if name in ("bench", "export", "profile"):
        from edgeprobe import api

        return getattr(api, name)
    if name == "list_devices":
        from edgeprobe.devices import list_devices

        return list_devices
    raise AttributeError(f"module 'edgeprobe' has no attribute {name!r}")
