"""One launch's headline numbers from its record, each with why it is missing when it is.

The gate's comparison (``gate/compare.py``) and the pytest plugin's budgets read the same numbers
from a BenchResult: latency percentiles, peak memory above the runner's own baseline, energy per
inference. They read them here, so both say the same thing when a runner did not measure one.
A missing number is ``(None, reason)``, never 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from edgeprobe.results import BenchResult

Reading = tuple[Optional[float], Optional[str]]  # the value, or None and why it was not measured
MIB = 1 << 20


def latency_ms(result: "BenchResult", percentile: str) -> Reading:
    """``percentile``: a LatencyStats field (``p50_ms``, ``p90_ms``, ``p99_ms``, ``mean_ms``)."""
    stats = result.stats
    return (getattr(stats, percentile), None) if stats else (None, "the runner reported no latency samples")


def peak_memory_mib(result: "BenchResult") -> Reading:
    """Peak resident memory above the runner's pre-load baseline, in MiB."""
    mem = result.run.memory
    if mem is None:
        return None, "the runner reported no memory"
    if mem.peak_rss_delta_bytes is None:
        return None, f"the runner reported no peak RSS or no baseline ({mem.source})"
    return mem.peak_rss_delta_bytes / MIB, None


def energy_mj_per_inference(result: "BenchResult") -> Reading:
    """Energy per inference from the device's meter (``energy.estimate``), when it is reliable."""
    from edgeprobe import energy

    reading = result.run.energy
    if reading is None:
        return None, "the record has no energy reading"
    n = len(result.run.timing.iteration_ns) if result.run.timing else 0
    est = energy.estimate(reading, n) if n else None
    if est is None:
        return None, reading.reason or "no energy meter on this device"
    if not est.reliable or est.per_inference_j is None:
        return None, f"{est.meter or 'meter'} unreliable: {est.reason or 'no idle baseline'}"
    return est.per_inference_j * 1e3, None
