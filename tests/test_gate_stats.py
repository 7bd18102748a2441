"""The gate's statistics against known distributions: shifts of 0 %, 3 % and 10 %, bimodal, drifting,
constant and too-small samples. Rates are measured over seeded trials, printed, and bounded."""

from __future__ import annotations

import numpy as np
import pytest

from edgeprobe.errors import UsageError
from edgeprobe.gate import stats
from edgeprobe.gate.stats import BETTER, SAME, UNKNOWN, WORSE, compare_samples, multimodal

CV = 0.03  # lognormal launch-to-launch noise, ~3 % coefficient of variation
TRIALS = 200
N_BOOT = 300  # fewer bootstrap resamples than the default, to keep the file fast


def _launches(rng: np.random.Generator, n: int, shift: float = 0.0, level_ms: float = 20.0) -> np.ndarray:
    return level_ms * (1 + shift) * rng.lognormal(0.0, CV, n)


def _verdicts(shift: float, *, floor: float = 0.05, seed: int = 0) -> list[stats.SampleComparison]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(TRIALS):
        n = 10 + t % 26  # n = 10..35
        out.append(compare_samples(_launches(rng, n), _launches(rng, n, shift), floor=floor, n_boot=N_BOOT, seed=t))
    return out


def _rate(results: list[stats.SampleComparison], *verdicts: str) -> float:
    return sum(r.verdict in verdicts for r in results) / len(results)


def test_no_shift_is_never_worse_or_better_beyond_the_alpha_rate():
    results = _verdicts(0.0)
    false_verdict = _rate(results, WORSE, BETTER)
    significant = sum(r.p_value <= 0.01 for r in results) / len(results)
    same = _rate(results, SAME)
    print(f"\n0 % shift over {TRIALS} trials: WORSE/BETTER {false_verdict:.3f}, p <= 0.01 {significant:.3f}, "
          f"SAME {same:.3f}, UNKNOWN {_rate(results, UNKNOWN):.3f}")
    assert false_verdict <= 0.01  # a verdict needs p <= alpha AND the whole interval beyond the floor
    assert significant <= 0.04  # min(MWU, KS) at 0.01: a little above alpha, as for Pinpoint
    assert same >= 0.8


def test_a_10_percent_regression_is_worse_most_of_the_time():
    results = _verdicts(0.10)
    worse = _rate(results, WORSE)
    print(f"\n10 % shift over {TRIALS} trials: WORSE {worse:.3f}, UNKNOWN {_rate(results, UNKNOWN):.3f}")
    assert worse >= 0.9
    assert _rate(results, BETTER, SAME) == 0
    for r in results:
        if r.verdict == WORSE:
            assert r.relative_shift_ci[0] >= 0.05 and 0.05 < r.relative_shift < 0.16 and "floor" in r.reason


def test_an_improvement_is_better_and_higher_is_better_flips_it():
    rng = np.random.default_rng(3)
    base, faster = _launches(rng, 20), _launches(rng, 20, -0.10)
    assert compare_samples(base, faster).verdict == BETTER
    assert compare_samples(base, faster, lower_is_better=False).verdict == WORSE  # e.g. throughput


def test_a_3_percent_shift_under_a_5_percent_floor_is_never_worse():
    results = _verdicts(0.03)
    print(f"\n3 % shift, 5 % floor, over {TRIALS} trials: SAME {_rate(results, SAME):.3f}, "
          f"UNKNOWN {_rate(results, UNKNOWN):.3f}, WORSE {_rate(results, WORSE):.3f}")
    assert _rate(results, WORSE, BETTER) == 0
    floored = [r for r in results if r.verdict == SAME and r.p_value <= 0.01]
    assert floored and all("below the 5% floor" in r.reason for r in floored)
    straddling = [r for r in results if r.verdict == UNKNOWN and r.p_value <= 0.01]
    assert all("straddles" in r.reason for r in straddling)
    # None only when the estimate sits so close to the floor that no affordable n would clear it
    assert all(r.needed_n is None or r.needed_n > min(r.n_baseline, r.n_candidate) for r in straddling)
    assert sum(r.needed_n is not None for r in straddling) >= 0.8 * len(straddling)


def test_a_3_percent_shift_without_a_floor_is_found_with_enough_launches():
    rng = np.random.default_rng(5)
    r = compare_samples(_launches(rng, 35), _launches(rng, 35, 0.03), floor=0.0, n_boot=N_BOOT)
    assert r.verdict == WORSE and r.p_value <= 0.01


def test_unknown_says_how_many_launches_would_decide():
    rng = np.random.default_rng(11)
    unknown = [r for r in _verdicts(0.0, seed=2)[:120] if r.verdict == UNKNOWN and r.p_value > 0.01]
    for r in unknown:
        assert r.needed_n is not None and r.needed_n > min(r.n_baseline, r.n_candidate), r
        assert stats.high_threshold(r.magnitude_iqr, r.needed_n) <= 0.01
        assert f"~{r.needed_n} launches" in r.reason
    noisy = compare_samples(20 * rng.lognormal(0, 0.3, 12), 20 * rng.lognormal(0.1, 0.3, 12), n_boot=N_BOOT)
    assert noisy.magnitude_iqr == stats.MAGNITUDE_RANGE_IQR[0]  # noise 10x the floor
    if noisy.verdict == UNKNOWN:
        assert noisy.needed_n is None or noisy.needed_n > 100


def test_high_thresholds_follow_pinpoints_table():
    # catapult thresholds.py, _HIGH_THRESHOLDS_PERFORMANCE: magnitude 1.0 IQR -> n=10: .5708,
    # n=20: .0811; 1.2 IQR -> n=10: .2731; 2.0 IQR -> n=8: .0240 (1M trials; ours 4000, and
    # scipy's exact MWU p-values for small n: a coarser tail at n=10)
    assert stats.high_threshold(1.0, 10) == pytest.approx(0.5708, abs=0.12)
    assert stats.high_threshold(1.0, 20) == pytest.approx(0.0811, abs=0.03)
    assert stats.high_threshold(1.2, 10) == pytest.approx(0.2731, abs=0.06)
    assert stats.high_threshold(2.0, 8) == pytest.approx(0.0240, abs=0.015)
    assert stats.high_threshold(1.0, 5) > stats.high_threshold(1.0, 15) > stats.high_threshold(1.0, 30)
    assert 25 <= stats.needed_launches(1.0, 10) <= stats.noether_n(1.0)


def test_bimodal_samples_are_unstable():
    rng = np.random.default_rng(7)
    flagged = total = 0
    for n in range(10, 36):
        for _ in range(12):
            k = n // 2
            x = np.concatenate([_launches(rng, k), _launches(rng, n - k, 0.30)])
            flagged += multimodal(rng.permutation(x)) is not None
            total += 1
    rate = flagged / total
    print(f"\nbimodal (modes 30 % apart, 50/50), n=10..35: flagged {rate:.3f} of {total}")
    assert rate >= 0.95
    rng = np.random.default_rng(8)
    base = np.concatenate([_launches(rng, 10), _launches(rng, 10, 0.30)])
    r = compare_samples(_launches(rng, 20), base, n_boot=N_BOOT)
    assert r.unstable and r.unstable_reason.startswith("candidate: 2 modes") and r.reason.startswith("unstable")


@pytest.mark.parametrize("kind", ["normal", "lognormal"])
def test_unimodal_samples_are_rarely_flagged(kind):
    rng = np.random.default_rng(9)
    flagged = total = 0
    for n in range(10, 36):
        for _ in range(25):
            x = rng.normal(20, 0.6, n) if kind == "normal" else 20 * rng.lognormal(0, 0.25 if n % 2 else CV, n)
            flagged += multimodal(x) is not None
            total += 1
    rate = flagged / total
    print(f"\n{kind} n=10..35: falsely flagged multimodal {rate:.4f} of {total}")
    assert rate < 0.02


def test_drift_within_a_sample():
    """Time order is ignored. A drift common to both sides (ABBA-interleaved launches on a heating
    phone) cancels: never WORSE or BETTER. A drift in the candidate alone (0 -> +20 % over its
    launches) is a wider distribution whose median moved by ~10 %: WORSE, like a plain 10 % shift.
    A drift this large (20 %, seven times the noise) flattens the distribution towards a uniform
    one, which the mode count sometimes calls unstable: a warning worth having."""
    rng = np.random.default_rng(13)
    common, unstable = [0, 0], 0
    for t in range(60):
        n = 10 + t % 26
        drift = np.linspace(0, 0.2, 2 * n)
        a, b = _launches(rng, 2 * n) * (1 + drift), _launches(rng, 2 * n) * (1 + drift)
        r = compare_samples(a[0::2], b[1::2], n_boot=N_BOOT, seed=t)  # interleaved: A B A B ...
        common[r.verdict in (WORSE, BETTER)] += 1
        unstable += r.unstable
    print(f"\ncommon 0..20 % drift, interleaved, 60 trials: WORSE/BETTER {common[1]}, unstable {unstable}")
    assert common[1] == 0
    rng = np.random.default_rng(14)
    drifting = _launches(rng, 30) * (1 + np.linspace(0, 0.2, 30))
    r = compare_samples(_launches(rng, 30), drifting, n_boot=N_BOOT)
    assert r.verdict == WORSE and 0.06 < r.relative_shift < 0.14


def test_identical_constants_are_same_and_different_constants_deterministic():
    same = compare_samples([4096] * 8, [4096] * 8)
    assert same.verdict == SAME and same.p_value is None and same.shift == 0 and "deterministic" in same.reason
    bigger = compare_samples([4096] * 8, [8192] * 8)
    assert bigger.verdict == WORSE and bigger.p_value is None and bigger.relative_shift == 1.0
    assert "deterministic" in bigger.reason
    assert compare_samples([4096] * 8, [2048] * 8).verdict == BETTER
    tiny = compare_samples([4096] * 8, [4100] * 8)
    assert tiny.verdict == SAME and "floor" in tiny.reason
    assert compare_samples([4096] * 8, [4100] * 8, floor=0).verdict == WORSE


def test_too_few_values_are_unknown_with_the_number_needed():
    r = compare_samples([1.0, 1.1, 0.9], [2.0, 2.1, 1.9, 2.2, 2.0, 1.8])
    assert r.verdict == UNKNOWN and r.needed_n == 5 and "too few" in r.reason
    assert r.p_value is not None and r.shift == pytest.approx(1.0, abs=0.15)
    empty = compare_samples([], [1.0, 2.0], min_n=10)
    assert empty.verdict == UNKNOWN and empty.needed_n == 10 and empty.p_value is None and empty.shift is None
    with pytest.raises(UsageError, match="finite"):
        compare_samples([1.0, float("nan")], [1.0])


def test_the_comparison_is_deterministic_and_frozen():
    rng = np.random.default_rng(21)
    a, b = _launches(rng, 15), _launches(rng, 15, 0.05)
    r1, r2 = compare_samples(a, b), compare_samples(list(a), tuple(b))
    assert r1 == r2 and r1.schema_version == stats.SCHEMA_VERSION
    with pytest.raises(AttributeError):
        r1.verdict = SAME  # type: ignore[misc]
