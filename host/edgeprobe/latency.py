"""Latency statistics derived on the host from a runner's raw per-iteration samples (percentiles,
trimmed mean, dispersion, a stability score and the reason a figure is flagged unstable)."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Optional


def percentile(sorted_values: typing.Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def trimmed_mean(sorted_values: typing.Sequence[float], proportion: float = 0.1) -> float:
    """Mean after cutting ``proportion`` of the samples from each end (scipy.stats.trim_mean)."""
    cut = int(proportion * len(sorted_values))
    kept = sorted_values[cut : len(sorted_values) - cut] or sorted_values
    return sum(kept) / len(kept)


def stability_score(cv_percent: float, max_min_ratio: float, p99_p50_ratio: float) -> float:
    """ExecuTorch's benchmark stability score, 0..100 (.ci/scripts/benchmark_tooling).

    0.5 * CV score (CV of 10 % or more scores 0) + 0.25 * max/min score (ratio 3 scores 0)
    + 0.25 * p99/p50 score (ratio 2 scores 0).
    """
    cv_score = max(0.0, 100.0 - cv_percent * 10.0)
    max_min_score = 0.0 if math.isinf(max_min_ratio) else max(0.0, 100.0 - (max_min_ratio - 1) * 50.0)
    p99_p50_score = max(0.0, 100.0 - (p99_p50_ratio - 1) * 100.0)
    return 0.5 * cv_score + 0.25 * max_min_score + 0.25 * p99_p50_score


@dataclass(frozen=True)
class LatencyStats:
    """Statistics derived from raw per-iteration samples (never stored, always recomputed)."""

    n: int
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    trimmed_mean_ms: float
    cv_percent: float
    stability_score: float

    @classmethod
    def from_ns(cls, samples_ns: typing.Sequence[int]) -> "LatencyStats":
        if not samples_ns:
            raise ValueError("no latency samples")
        ms = sorted(s / 1e6 for s in samples_ns)
        n = len(ms)
        mean = sum(ms) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in ms) / (n - 1)) if n > 1 else 0.0
        cv = std / mean * 100.0 if mean > 0 else 0.0
        p50, p99 = percentile(ms, 50), percentile(ms, 99)
        max_min = ms[-1] / ms[0] if ms[0] > 0 else math.inf
        return cls(
            n=n,
            mean_ms=mean,
            std_ms=std,
            min_ms=ms[0],
            max_ms=ms[-1],
            p50_ms=p50,
            p90_ms=percentile(ms, 90),
            p99_ms=p99,
            trimmed_mean_ms=trimmed_mean(ms, 0.1),
            cv_percent=cv,
            stability_score=stability_score(cv, max_min, p99 / p50 if p50 > 0 else math.inf),
        )

    @property
    def unstable_reason(self) -> Optional[str]:
        """Why these samples do not make a stable figure (None when they do): a CV above
        STABLE_MAX_CV_PERCENT or a stability score below STABLE_MIN_SCORE."""
        why = []
        if self.cv_percent > STABLE_MAX_CV_PERCENT:
            why.append(f"CV {self.cv_percent:.1f} % > {STABLE_MAX_CV_PERCENT:g} %")
        if self.stability_score < STABLE_MIN_SCORE:
            why.append(f"stability {self.stability_score:.0f}/100 < {STABLE_MIN_SCORE:g}")
        return "; ".join(why) or None


STABLE_MAX_CV_PERCENT = 5.0  # above this, a latency figure is flagged as not stable
STABLE_MIN_SCORE = 60.0  # ... and below this stability score
