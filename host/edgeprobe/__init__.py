"""edgeprobe: lower PyTorch models for edge devices and measure them there, honestly.

Public API (every name is imported on first use: ``import edgeprobe`` imports neither torch nor
the record classes)::

    edgeprobe.bench(model, device="local", ...) -> BenchResult
    edgeprobe.export(model, format="pte", backend="xnnpack") -> Artifact
    edgeprobe.profile(model, device="local") -> ProfileReport
    edgeprobe.sweep(model, recipes, device="local", ...) -> SweepResult
    edgeprobe.api.split(model, device="local", server=None, ...) -> SplitPlan (not edgeprobe.split:
        that name is the edgeprobe.split package)
    edgeprobe.rerun(record.request) -> the same kind of record, measured again
    edgeprobe.list_devices() -> list[DeviceInfo]
    edgeprobe.BenchResult.load(path)
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__", "bench", "export", "profile", "sweep", "recommend", "rerun", "list_devices", "BenchResult",
           "LatencyStats", "SCHEMA_VERSION"]

_API = ("bench", "export", "profile", "sweep", "recommend", "rerun")
_RESULTS = ("BenchResult", "LatencyStats", "SCHEMA_VERSION")


def __getattr__(name: str) -> Any:
    if name in _API:
        from edgeprobe import api

        return getattr(api, name)
    if name in _RESULTS:
        from edgeprobe import results

        return getattr(results, name)
    if name == "__version__":
        from edgeprobe.versions import __version__

        return __version__
    if name == "list_devices":
        from edgeprobe.devices import list_devices

        return list_devices
    raise AttributeError(f"module 'edgeprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
