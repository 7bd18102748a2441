"""The adaptive ABBA gate: a baseline and a candidate artifact measured on one device in A B B A
order, launch by launch, until the comparison is decided or the launch cap is reached.

ABBA (as FAI-PEP runs control and treatment interleaved) spreads slow drift, a device warming up
over the run, evenly over both sides: a linear drift adds the same to A+A as to B+B in each round.
The gate starts with ``min_launches`` launches per side (rounded up to whole rounds). It then
compares after every round and stops as soon as no gating metric is UNKNOWN or unstable, or when
another whole round would take a side past ``max_launches``. The run hygiene of ``MeasureConfig`` (cooldown, thermal and
battery gates) applies before every launch. A baseline given as stored records (a record file, a
farm run) is not measured again: only the candidate is launched, until decided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from edgeprobe.errors import UsageError
from edgeprobe.gate.compare import GATING, INCONCLUSIVE, CellComparison, compare_launches
from edgeprobe.results import BenchResult

Log = Callable[[str], None]
MAX_FAILED_LAUNCHES = 3


@dataclass(frozen=True)
class GateRun:
    comparison: CellComparison
    order: tuple[str, ...]  # "A"/"B" per launch, in the order run
    rounds: int
    decided: bool  # stopped because the verdict was decided (not at the cap)
    baseline: tuple[BenchResult, ...]  # every baseline record (measured now, or the stored ones)
    candidate: tuple[BenchResult, ...]


class GateCouldNotRun(UsageError):
    """The gate could not measure: too many failed launches, or the device went away."""


def _open(comparison: Optional[CellComparison]) -> bool:
    if comparison is None:
        return True
    return comparison.outcome == INCONCLUSIVE and any(
        m.gating and (m.verdict == "UNKNOWN" or m.unstable) for m in comparison.metrics)


def run_gate(measure: Callable[[str], BenchResult], *, stored_baseline: Sequence[BenchResult] = (),
             candidate_done: Sequence[BenchResult] = (), min_launches: int = 10, max_launches: int = 35,
             floor: float = 0.05, floor_rules: Sequence[str] = (), gating: Sequence[str] = GATING,
             force: bool = False, labels: tuple[str, str] = ("baseline", "candidate"),
             log: Optional[Log] = None) -> GateRun:
    """Run the gate. ``measure("A")`` / ``measure("B")`` launches the baseline / the candidate once
    (one fresh runner process) and returns its record. With ``stored_baseline`` only B is launched;
    ``candidate_done`` are candidate launches already made, counted as the first ones."""
    if not 2 <= min_launches <= max_launches:
        raise UsageError(f"need 2 <= min_launches <= max_launches, got {min_launches} and {max_launches}")
    say = log or (lambda _m: None)
    pattern = ("B", "B") if stored_baseline else ("A", "B", "B", "A")
    per_round = 2  # launches of each measured side per round
    base: list[BenchResult] = list(stored_baseline)
    cand: list[BenchResult] = list(candidate_done)  # launches already made (a history baseline's probe)
    order: list[str] = ["B"] * len(cand)
    failed, rounds, comparison = 0, 0, None
    first_rounds = math.ceil(min_launches / per_round)
    while True:
        for side in pattern:
            r = measure(side)
            order.append(side)
            (base if side == "A" else cand).append(r)
            if not r.ok:
                failed += 1
                why = f"{r.run.error.code}: {r.run.error.message}" if r.run.error else "failed"
                say(f"launch {len(order)} ({labels[side == 'B']}) failed: {why}")
                if failed > MAX_FAILED_LAUNCHES:
                    raise GateCouldNotRun(f"{failed} launches failed (the last: {why}); the gate could not run")
        rounds += 1
        n_cand = sum(r.ok for r in cand)
        n_base = sum(r.ok for r in base)
        if rounds < first_rounds or not n_cand or not n_base:
            continue
        comparison = compare_launches(base, cand, baseline_label=labels[0], candidate_label=labels[1],
                                      floor=floor, floor_rules=floor_rules, gating=gating, force=force)
        p50 = comparison.metric("latency_p50_ms")
        say(f"round {rounds}: {n_base} + {n_cand} launches, {comparison.outcome}"
            + (f", p50 {p50.verdict} ({p50.reason})" if p50.comparison else ""))
        if not _open(comparison):
            return GateRun(comparison, tuple(order), rounds, True, tuple(base), tuple(cand))
        if sum(s == "B" for s in order) + per_round > max_launches:  # another round would pass the cap
            return GateRun(comparison, tuple(order), rounds, False, tuple(base), tuple(cand))


def measure_with(session: Any, baseline: Any, candidate: Any, config: Any) -> Callable[[str], BenchResult]:
    """``measure`` for ``run_gate`` over one open MeasureSession: A is the baseline artifact, B the candidate."""
    def measure(side: str) -> BenchResult:
        return session.measure(baseline if side == "A" else candidate, config)
    return measure
