"""Compare two sets of launches of one cell (model, recipe, device), metric by metric, with a verdict.

The unit of replication is a *launch*: one fresh runner process, one record. Each metric is one
number per launch: the launch's median (p50) or p90 latency, its peak resident memory above the
runner's baseline, its energy per inference where a meter measured it, the artifact's size. The two
sides' per-launch values go to ``gate/stats.py``: p = min(Mann-Whitney U, Kolmogorov-Smirnov),
a Hodges-Lehmann shift with a bootstrap interval, a practical floor. That gives a verdict per
metric: FASTER / SLOWER for latency, SMALLER / LARGER for memory, energy and size, and SAME or
UNKNOWN otherwise. A metric no launch measured is UNAVAILABLE with the record's reason.

A cell's outcome:

- ``regression``: a gating metric got worse, in a sample that is not multimodal;
- ``inconclusive``: a gating metric is UNKNOWN (too few launches, or a p-value between the
  thresholds) or unstable (multimodal), and no stable regression was found;
- ``pass`` otherwise.

Records of different models or devices are refused with what differs, unless forced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from edgeprobe import metrics
from edgeprobe.errors import UsageError
from edgeprobe.gate import stats
from edgeprobe.results import BenchResult

SCHEMA_VERSION = 1
PASS, REGRESSION, INCONCLUSIVE = "pass", "regression", "inconclusive"
UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    words: tuple[str, str]  # (better, worse) verdict names
    value: Callable[[BenchResult], tuple[Optional[float], Optional[str]]]  # (value, why it is missing)


def _latency(which: str) -> Callable[[BenchResult], tuple[Optional[float], Optional[str]]]:
    return lambda r: metrics.latency_ms(r, which)


def _size(r: BenchResult) -> tuple[Optional[float], Optional[str]]:
    return float(r.manifest.artifact_size_bytes), None


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("latency_p50_ms", "ms", ("FASTER", "SLOWER"), _latency("p50_ms")),
    Metric("latency_p90_ms", "ms", ("FASTER", "SLOWER"), _latency("p90_ms")),
    Metric("peak_memory_mib", "MiB", ("SMALLER", "LARGER"), metrics.peak_memory_mib),
    Metric("energy_mj_per_inference", "mJ", ("SMALLER", "LARGER"), metrics.energy_mj_per_inference),
    Metric("artifact_size_bytes", "B", ("SMALLER", "LARGER"), _size),
)}
GATING = ("latency_p50_ms", "peak_memory_mib", "artifact_size_bytes")  # p90 and energy are reported


@dataclass(frozen=True)
class MetricVerdict:
    metric: str
    unit: str
    verdict: str  # FASTER | SLOWER | SMALLER | LARGER | SAME | UNKNOWN | UNAVAILABLE
    gating: bool
    regression: bool  # worse, and the sample is not unstable
    unstable: bool
    reason: str
    comparison: Optional[stats.SampleComparison] = None


@dataclass(frozen=True)
class CellComparison:
    model: str
    recipe: str  # the candidate's (the baseline's in ``baseline_recipe``)
    device: str
    baseline_label: str
    candidate_label: str
    baseline_recipe: str
    baseline_launches: int  # launches that measured (a failed launch is not a sample)
    candidate_launches: int
    failed_launches: int
    metrics: tuple[MetricVerdict, ...]
    outcome: str  # pass | regression | inconclusive
    reason: str
    schema_version: int = SCHEMA_VERSION

    def metric(self, name: str) -> MetricVerdict:
        return next(m for m in self.metrics if m.metric == name)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.recipe} on {self.device}"


def floor_for(model: str, device: str, default: float, rules: Sequence[str] = ()) -> float:
    """The practical floor of a cell: the last of ``rules`` that matches it, else ``default``. A rule
    is ``PATTERN=FRACTION`` with PATTERN ``model``, ``model@device`` or ``@device`` (shell
    wildcards allowed): ``mobilenet_v2=0.08``, ``*@adb:*=0.10``."""
    import fnmatch

    floor = default
    for rule in rules:
        pattern, eq, value = rule.rpartition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not eq or not pattern or not 0 <= fraction < 1:
            raise UsageError(f"floor rule {rule!r}: expected PATTERN=FRACTION (0 <= FRACTION < 1), e.g. "
                             "mobilenet_v2=0.08 or *@adb:*=0.1")
        want_model, at, want_device = pattern.partition("@")
        if fnmatch.fnmatchcase(model, want_model or "*") and fnmatch.fnmatchcase(device, want_device if at else "*"):
            floor = fraction
    return floor


def differences(baseline: Sequence[BenchResult], candidate: Sequence[BenchResult]) -> list[str]:
    """What makes these launches not one cell: another model or another device (recipes may differ:
    that is what a gate compares)."""
    out = []
    for what, key in (("model", lambda r: r.manifest.model_ref), ("device", lambda r: r.device.id)):
        a, b = sorted({key(r) for r in baseline}), sorted({key(r) for r in candidate})
        if len(a) > 1 or len(b) > 1 or a != b:
            out.append(f"{what}: baseline {', '.join(a) or '—'} vs candidate {', '.join(b) or '—'}")
    return out


def _metric(metric: Metric, base: Sequence[BenchResult], cand: Sequence[BenchResult], gating: bool,
            floor: float, min_n: int) -> MetricVerdict:
    bv, cv, why = [], [], None
    for rs, out in ((base, bv), (cand, cv)):
        for r in rs:
            v, missing = metric.value(r)
            if v is None:
                why = why or missing
            else:
                out.append(v)
    if not bv and not cv:
        return MetricVerdict(metric.name, metric.unit, UNAVAILABLE, gating, False, False,
                             f"unavailable: {why or 'not measured'}")
    c = stats.compare_samples(bv, cv, lower_is_better=True, floor=floor, min_n=min_n)
    verdict = {stats.BETTER: metric.words[0], stats.WORSE: metric.words[1], stats.SAME: "SAME"}.get(c.verdict,
                                                                                                     "UNKNOWN")
    regression = c.verdict == stats.WORSE and not c.unstable
    reason = c.reason + (f"; unstable: {c.unstable_reason}" if c.unstable else "")
    if why and (len(bv) < len(base) or len(cv) < len(cand)):
        reason += f"; some launches did not measure it ({why})"
    return MetricVerdict(metric.name, metric.unit, verdict, gating, regression, c.unstable, reason, c)


def compare_launches(baseline: Sequence[BenchResult], candidate: Sequence[BenchResult], *,
                     baseline_label: str = "baseline", candidate_label: str = "candidate", floor: float = 0.05,
                     floor_rules: Sequence[str] = (), gating: Sequence[str] = GATING, min_n: int = 5,
                     force: bool = False) -> CellComparison:
    """One cell's comparison, from the records of its launches (failed launches are counted, not used).
    ``floor`` is the practical floor unless one of ``floor_rules`` (see ``floor_for``) matches the cell."""
    unknown = [g for g in gating if g not in METRICS]
    if unknown:
        raise UsageError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    base = [r for r in baseline if r.ok]
    cand = [r for r in candidate if r.ok]
    failed = len(baseline) + len(candidate) - len(base) - len(cand)
    if not base or not cand:
        raise UsageError(f"nothing to compare: {len(base)} measured baseline launch(es), {len(cand)} measured "
                         f"candidate launch(es) ({failed} failed)")
    diff = differences(base, cand)
    if diff and not force:
        raise UsageError("these are not the same cell (" + "; ".join(diff) + "); pass --force to compare anyway")
    floor = floor_for(cand[0].manifest.model_ref, cand[0].device.id, floor, floor_rules)
    verdicts = tuple(_metric(METRICS[name], base, cand, name in gating, floor, min_n) for name in METRICS)
    gates = [m for m in verdicts if m.gating and m.verdict != UNAVAILABLE]
    worse = [m for m in gates if m.regression]
    open_ = [m for m in gates if m.verdict == "UNKNOWN" or m.unstable]
    if worse:
        outcome, reason = REGRESSION, "; ".join(f"{m.metric} {m.verdict}: {m.reason}" for m in worse)
    elif open_:
        outcome, reason = INCONCLUSIVE, "; ".join(f"{m.metric} {m.verdict}"
                                                  + (" (unstable)" if m.unstable else "") + f": {m.reason}"
                                                  for m in open_)
    else:
        outcome, reason = PASS, "no gating metric got worse beyond the floor"
    r0, b0 = cand[0], base[0]
    return CellComparison(r0.manifest.model_ref, r0.manifest.recipe, r0.device.id, baseline_label, candidate_label,
                          b0.manifest.recipe, len(base), len(cand), failed, verdicts, outcome, reason)


def outcome_of(cells: Sequence[CellComparison]) -> str:
    """Several cells: a regression anywhere, else inconclusive anywhere, else pass."""
    outcomes = {c.outcome for c in cells}
    return REGRESSION if REGRESSION in outcomes else INCONCLUSIVE if INCONCLUSIVE in outcomes else PASS
