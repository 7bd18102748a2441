"""Compare two samples of per-launch values: BETTER / WORSE / SAME / UNKNOWN, and whether either is unstable.

The unit of replication is a *launch* (a fresh runner process) summarised by one number, e.g. its
median latency. The decision follows Chromium's Pinpoint (catapult
``dashboard/dashboard/pinpoint/models/compare/compare.py`` and ``thresholds.py``):

* p = min(p of Mann-Whitney U two-sided, p of Kolmogorov-Smirnov two-sample): MWU misses changes
  of spread, KS is weak on discrete values, so both (scipy.stats);
* p <= ``alpha`` (Pinpoint's low threshold, 0.01): DIFFERENT;
* p > the *high threshold*: SAME. Pinpoint's high threshold for n values per side and a
  difference of ``magnitude`` interquartile ranges is the 99th percentile of the MWU p-value of two
  normal samples that far apart (``thresholds_performance.py``): a p above it would come from a
  real difference of that size only 1 % of the time. We compute it the same way (seeded
  simulation, 4000 trials, cached), with the magnitude set by the practical floor: ``floor`` x
  baseline median / pooled IQR, so SAME means "no difference as large as the floor";
* otherwise UNKNOWN: collect more. ``needed_n`` is the sample size at which that high threshold
  falls to ``alpha`` (then every p decides), found by bisection between n and Noether's (1987)
  sample-size formula for the Wilcoxon-Mann-Whitney test at 99 % power, which brackets it.

A DIFFERENT is then weighed against the practical floor with the Hodges-Lehmann shift (median of
all pairwise differences) and its percentile-bootstrap 95 % interval: the whole interval within
+-floor is SAME (detectable, irrelevant), the whole interval beyond the floor is WORSE or BETTER,
an interval across the floor is UNKNOWN with ``needed_n`` from the interval's 1/sqrt(n) shrinkage.
Time order is ignored: a drift within a sample is seen only as a wider, shifted distribution.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats as _st

from edgeprobe.errors import UsageError

SCHEMA_VERSION = 1
BETTER, WORSE, SAME, UNKNOWN = "better", "worse", "same", "unknown"

FALSE_SAME_RATE = 0.01  # Pinpoint's P_VALUE in thresholds_performance.py: the 99th percentile
THRESHOLD_TRIALS = 4000
MAGNITUDE_RANGE_IQR = (0.3, 4.0)  # the range of Pinpoint's performance table
MAX_NEEDED_N = 2000
_IQR_PER_SD = float(_st.norm.ppf(0.75) - _st.norm.ppf(0.25))  # 1.349

# multimodal(): Gaussian KDE, Silverman's rule-of-thumb bandwidth (Silverman 1986, eq. 3.31),
# a mode counts when it holds >= MODE_MIN_FRACTION of the values (at least MODE_MIN_COUNT) and the
# density between it and its neighbour dips to <= ANTIMODE_RATIO of the lower peak. Calibrated by
# simulation (tests/test_gate_stats.py): unimodal normal/lognormal n=10..35 flagged ~1 %, two modes
# 30 % apart (3 % CV each, 50/50) ~99 %.
MODE_MIN_FRACTION = 0.2
MODE_MIN_COUNT = 3
ANTIMODE_RATIO = 0.7
MULTIMODAL_MIN_N = 6
_GRID_POINTS = 512


@dataclass(frozen=True)
class SampleComparison:
    n_baseline: int
    n_candidate: int
    baseline_median: Optional[float]
    candidate_median: Optional[float]
    shift: Optional[float]  # Hodges-Lehmann estimate of (candidate - baseline), metric units
    shift_ci: Optional[tuple[float, float]]  # bootstrap 95 % CI of that shift
    relative_shift: Optional[float]  # shift / baseline_median
    p_mwu: Optional[float]
    p_ks: Optional[float]
    p_value: Optional[float]  # min(p_mwu, p_ks), as Chromium's Pinpoint does
    verdict: str  # BETTER | WORSE | SAME | UNKNOWN
    unstable: bool  # a clearly multimodal sample (either side)
    unstable_reason: Optional[str]
    needed_n: Optional[int]  # when UNKNOWN: launches per side estimated to decide (None if not estimable)
    reason: str  # one line: why this verdict, with the numbers
    schema_version: int = SCHEMA_VERSION
    high_threshold: Optional[float] = None  # the p above which this comparison is SAME
    magnitude_iqr: Optional[float] = None  # the floor in pooled IQRs, the magnitude the threshold is for
    relative_shift_ci: Optional[tuple[float, float]] = None  # shift_ci / baseline_median


def _values(values: Sequence[float], side: str) -> np.ndarray:
    x = np.asarray(list(values), dtype=float).ravel()
    if not np.all(np.isfinite(x)):
        raise UsageError(f"compare: the {side} values must be finite numbers (got {x[~np.isfinite(x)][:3].tolist()})")
    return x


def hodges_lehmann(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """The Hodges-Lehmann shift: the median of all (candidate - baseline) pairwise differences."""
    b, c = np.asarray(baseline, float), np.asarray(candidate, float)
    return float(np.median(c[:, None] - b[None, :]))


def bootstrap_shift_ci(baseline: Sequence[float], candidate: Sequence[float], *, n_boot: int = 2000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the Hodges-Lehmann shift (each side resampled on its own)."""
    b, c = np.asarray(baseline, float), np.asarray(candidate, float)
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // (len(b) * len(c)))  # bounds memory: chunk x nb x nc floats
    shifts = []
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        rb = b[rng.integers(0, len(b), (k, len(b)))]
        rc = c[rng.integers(0, len(c), (k, len(c)))]
        shifts.append(np.median((rc[:, :, None] - rb[:, None, :]).reshape(k, -1), axis=1))
    s = np.concatenate(shifts)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(s, [tail, 100 - tail])
    return float(lo), float(hi)


def p_values(baseline: Sequence[float], candidate: Sequence[float]) -> tuple[float, float]:
    """(p of MWU two-sided, p of KS two-sample); all values tied gives 1.0, not NaN."""
    p_mwu = float(_st.mannwhitneyu(baseline, candidate, alternative="two-sided").pvalue)
    p_ks = float(_st.ks_2samp(baseline, candidate).pvalue)
    return (1.0 if math.isnan(p_mwu) else p_mwu), (1.0 if math.isnan(p_ks) else p_ks)


def _magnitude_bin(magnitude_iqr: float) -> float:
    """Rounded down to Pinpoint's 0.1 grid (smaller is the conservative side), clipped to its range."""
    lo, hi = MAGNITUDE_RANGE_IQR
    if not math.isfinite(magnitude_iqr):
        return hi
    return min(max(math.floor(magnitude_iqr * 10 + 1e-9) / 10, lo), hi)


@functools.lru_cache(maxsize=4096)
def _simulated_threshold(magnitude_bin: float, n: int) -> float:
    if n < 1:
        return 1.0
    rng = np.random.default_rng([int(round(magnitude_bin * 10)), n])
    a = rng.standard_normal((THRESHOLD_TRIALS, n))
    b = rng.standard_normal((THRESHOLD_TRIALS, n)) + magnitude_bin * _IQR_PER_SD
    p = _st.mannwhitneyu(a, b, axis=1, alternative="two-sided").pvalue
    return float(np.percentile(p, (1 - FALSE_SAME_RATE) * 100))


def high_threshold(magnitude_iqr: float, n: int) -> float:
    """Pinpoint's high threshold for n values per side and a difference of ``magnitude_iqr`` IQRs,
    by its own method (thresholds_performance.py): the 99th percentile of the MWU p-value of two
    normal samples that far apart, over 4000 seeded trials (deterministic, cached)."""
    return _simulated_threshold(_magnitude_bin(magnitude_iqr), int(n))


def noether_n(magnitude_iqr: float, *, alpha: float = 0.01, power: float = 1 - FALSE_SAME_RATE) -> int:
    """Per-side sample size for the two-sided WMW test to detect a normal shift of ``magnitude_iqr``
    IQRs with ``power`` at level ``alpha`` (Noether 1987, equal groups)."""
    theta = float(_st.norm.cdf(magnitude_iqr * _IQR_PER_SD / math.sqrt(2)))  # P(X < Y)
    z = float(_st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power))
    return int(math.ceil(z * z / (6 * (theta - 0.5) ** 2)))


def needed_launches(magnitude_iqr: float, n: int, *, alpha: float = 0.01) -> Optional[int]:
    """The smallest sample size per side (> n) at which the high threshold is <= alpha, so that any
    p decides; None if it is beyond MAX_NEEDED_N."""
    m = _magnitude_bin(magnitude_iqr)
    hi = max(noether_n(m, alpha=alpha), n + 1)
    if hi > MAX_NEEDED_N:
        return None
    if high_threshold(m, hi) > alpha:
        return hi
    lo = n  # invariant: threshold(lo) > alpha (or lo is the current n), threshold(hi) <= alpha
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if high_threshold(m, mid) <= alpha:
            hi = mid
        else:
            lo = mid
    return hi


def multimodal(values: Sequence[float]) -> Optional[str]:
    """None, or why the sample looks multimodal: a Gaussian KDE with Silverman's rule-of-thumb
    bandwidth (0.9 min(sd, IQR/1.349) n^-1/5) that has two or more modes, each holding >= 20 % of
    the values (>= 3), separated by a density dip to <= 0.7 of the lower peak. Fewer than 6 values:
    None (not judged)."""
    x = np.sort(np.asarray(list(values), dtype=float))
    n = len(x)
    if n < MULTIMODAL_MIN_N or not np.all(np.isfinite(x)):
        return None
    sd = float(np.std(x, ddof=1))
    iqr = float(np.subtract(*np.percentile(x, [75, 25])))
    scale = min(sd, iqr / _IQR_PER_SD) if iqr > 0 else sd
    if scale <= 0:
        return None
    h = 0.9 * scale * n ** -0.2
    grid = np.linspace(x[0] - 3 * h, x[-1] + 3 * h, _GRID_POINTS)
    density = _st.norm.pdf((grid[:, None] - x[None, :]) / h).sum(axis=1)
    rising = np.diff(density)
    peaks = list(np.where((rising[:-1] > 0) & (rising[1:] <= 0))[0] + 1)

    def dip(i: int) -> tuple[float, int]:
        lo = peaks[i] + int(np.argmin(density[peaks[i]:peaks[i + 1] + 1]))
        return float(density[lo] / min(density[peaks[i]], density[peaks[i + 1]])), lo

    while len(peaks) > 1:  # merge the shallowest dip's lower peak away until every dip is deep
        ratio, i = max((dip(i)[0], i) for i in range(len(peaks) - 1))
        if ratio <= ANTIMODE_RATIO:
            break
        peaks.pop(i if density[peaks[i]] < density[peaks[i + 1]] else i + 1)
    if len(peaks) < 2:
        return None
    cuts = [grid[dip(i)[1]] for i in range(len(peaks) - 1)]
    counts = np.diff(np.searchsorted(x, [-np.inf, *cuts, np.inf]))
    big = [(float(grid[p]), int(k)) for p, k in zip(peaks, counts) if k >= max(MODE_MIN_COUNT, MODE_MIN_FRACTION * n)]
    if len(big) < 2:
        return None
    modes = ", ".join(f"{m:.4g} ({k} values)" for m, k in big)
    return f"{len(big)} modes (KDE, Silverman bandwidth {h:.3g}): {modes}"


def _pct(x: float) -> str:
    return f"{x * 100:+.1f} %"


def _direction(shift: float, lower_is_better: bool) -> str:
    return WORSE if (shift > 0) == lower_is_better else BETTER


def compare_samples(baseline: Sequence[float], candidate: Sequence[float], *, lower_is_better: bool = True,
                    floor: float = 0.05, alpha: float = 0.01, min_n: int = 5, n_boot: int = 2000,
                    seed: int = 0) -> SampleComparison:
    """Compare per-launch values of a baseline and a candidate (see the module docstring)."""
    b, c = _values(baseline, "baseline"), _values(candidate, "candidate")
    nb, nc = len(b), len(c)
    med_b = float(np.median(b)) if nb else None
    med_c = float(np.median(c)) if nc else None
    out = dict(n_baseline=nb, n_candidate=nc, baseline_median=med_b, candidate_median=med_c, shift=None,
               shift_ci=None, relative_shift=None, p_mwu=None, p_ks=None, p_value=None, unstable=False,
               unstable_reason=None, needed_n=None)
    why_unstable = [f"{side}: {r}" for side, r in (("baseline", multimodal(b)), ("candidate", multimodal(c))) if r]
    if why_unstable:
        out.update(unstable=True, unstable_reason="; ".join(why_unstable))
    prefix = f"unstable ({out['unstable_reason']}); " if why_unstable else ""
    counts = f"n={nb}/{nc}"

    def rel(x: float) -> Optional[float]:
        return x / abs(med_b) if med_b else None

    if nb and nc:
        shift = hodges_lehmann(b, c)
        out.update(shift=shift, relative_shift=rel(shift))
    if nb < min_n or nc < min_n:
        if nb and nc:
            out.update(zip(("p_mwu", "p_ks"), p_values(b, c)))
            out["p_value"] = min(out["p_mwu"], out["p_ks"])
        return _few(out, min_n, prefix, counts)

    if np.ptp(b) == 0 and np.ptp(c) == 0:  # deterministic: the same number every launch (e.g. artifact size)
        shift = med_c - med_b
        r = rel(shift)
        out.update(shift=shift, shift_ci=(shift, shift), relative_shift=r,
                   relative_shift_ci=(r, r) if r is not None else None)
        if shift == 0:
            return SampleComparison(**out, verdict=SAME, reason=f"deterministic: {med_b:g} every launch on both sides ({counts})")
        if r is not None and abs(r) < floor:
            return SampleComparison(**out, verdict=SAME, reason=f"deterministic: {med_b:g} -> {med_c:g} ({_pct(r)}), "
                                                                 f"below the {floor:.0%} floor ({counts})")
        size = f" ({_pct(r)})" if r is not None else ""
        return SampleComparison(**out, verdict=_direction(shift, lower_is_better),
                                reason=f"deterministic: {med_b:g} -> {med_c:g}{size} every launch ({counts})")

    p_mwu, p_ks = p_values(b, c)
    p = min(p_mwu, p_ks)
    lo, hi = bootstrap_shift_ci(b, c, n_boot=n_boot, seed=seed)
    out.update(p_mwu=p_mwu, p_ks=p_ks, p_value=p, shift_ci=(lo, hi))
    pooled = np.concatenate([b - med_b, c - med_c])
    iqr = float(np.subtract(*np.percentile(pooled, [75, 25])))
    magnitude = _magnitude_bin(floor * abs(med_b) / iqr if iqr > 0 else math.inf)
    n = min(nb, nc)
    thr = high_threshold(magnitude, n)
    out.update(high_threshold=thr, magnitude_iqr=magnitude)
    r, r_lo, r_hi = rel(out["shift"]), rel(lo), rel(hi)
    if r is not None:
        out["relative_shift_ci"] = (r_lo, r_hi)
    ps = f"p={p:.3g} (MWU {p_mwu:.3g}, KS {p_ks:.3g})"
    size = (f"{_pct(r)} (95 % CI {_pct(r_lo)}..{_pct(r_hi)})" if r is not None
            else f"{out['shift']:+.4g} (95 % CI {lo:+.4g}..{hi:+.4g})")

    if p <= alpha:
        if r is None:  # a zero baseline median: no relative floor to weigh against
            return SampleComparison(**out, verdict=_direction(out["shift"], lower_is_better),
                                    reason=f"{prefix}shift {size}, {ps} <= {alpha:g}, {counts}")
        if -floor < r_lo and r_hi < floor:
            return SampleComparison(**out, verdict=SAME, reason=f"{prefix}detectable but below the {floor:.0%} floor: "
                                                                 f"shift {size}, {ps} <= {alpha:g}, {counts}")
        if r_lo >= floor or r_hi <= -floor:
            return SampleComparison(**out, verdict=_direction(out["shift"], lower_is_better),
                                    reason=f"{prefix}shift {size} beyond the {floor:.0%} floor, {ps} <= {alpha:g}, "
                                           f"{counts}")
        # the interval crosses the floor: shrink it (half-width ~ 1/sqrt(n)) until it clears the floor
        distance = abs(abs(r) - floor)
        half = (r_hi - r_lo) / 2
        need = int(math.ceil(n * (half / distance) ** 2)) if distance > 0 else None
        out["needed_n"] = max(need, n + 1) if need is not None and need <= MAX_NEEDED_N else None
        return SampleComparison(**out, verdict=UNKNOWN, reason=f"{prefix}different ({ps} <= {alpha:g}) but the "
                                                                f"shift {size} straddles the {floor:.0%} floor, {counts}")
    if p > thr:
        return SampleComparison(**out, verdict=SAME, reason=f"{prefix}{ps} > high threshold {thr:.3g} (floor {floor:.0%}"
                                                             f" = {magnitude:.1f} IQR, n={n}); shift {size}, {counts}")
    out["needed_n"] = needed_launches(magnitude, n, alpha=alpha)
    more = f"~{out['needed_n']} launches per side to decide" if out["needed_n"] else "too noisy to decide soon"
    return SampleComparison(**out, verdict=UNKNOWN, reason=f"{prefix}{ps} between {alpha:g} and high threshold "
                                                            f"{thr:.3g}: {more}; shift {size}, {counts}")


def _few(out: dict, min_n: int, prefix: str, counts: str) -> SampleComparison:
    out = dict(out, needed_n=max(min_n, 1))
    return SampleComparison(**out, verdict=UNKNOWN,
                            reason=f"{prefix}too few launches for a verdict ({counts}); need at least {min_n} per side")
