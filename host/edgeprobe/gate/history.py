"""A cell's history in the farm database, its baseline and its change points.

``history`` gives one point per farm run (the median over that run's good launches) of a
(model, recipe, device), oldest first; ``baseline_of`` is the median of the last k (the rule of
ExecuTorch's CUDA perf gate: a drop of > 5 % against the median of the last 5 good runs);
``change_points`` finds where a new level starts with PELT (Killick, Fearnhead & Eckley 2012) from
the maintained ``ruptures`` library, with the L1 cost (segment medians: robust to the odd outlier
run, as asv's ``step_detect`` L1 fit is) and a penalty of 3 robust sigmas x log(n).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from sqlalchemy import select

from edgeprobe.errors import UsageError

METRICS = ("p50_ms", "p90_ms", "mean_ms", "peak_rss_delta_bytes")  # the results table's headline columns
# PELT penalty, in robust sigmas x log(n): calibrated on lognormal 3 % CV series of 10..60 runs
# (tests/test_gate_history.py): flat series get a change point ~0.5 % of the time, and a 10 % step
# is found at its exact index ~80 % of the time (most misses are off by one run)
PENALTY_SIGMAS = 3.0
MIN_SEGMENT = 2  # a new level needs two runs: one odd run is an outlier, not a step


@dataclass(frozen=True)
class HistoryPoint:
    run_id: str
    created_utc: float  # the run's start, UTC epoch seconds
    value: float  # the median of the metric over the run's good launches of the cell
    runner_version: Optional[str]
    os: Optional[str]
    launches: int = 1  # how many launches that median is over


def baseline_of(values: Sequence[float], *, k: int = 5, min_count: int = 3) -> Optional[float]:
    """The median of the last ``k`` values (oldest first input); None if there are fewer than ``min_count``."""
    vals = [float(v) for v in values]
    if len(vals) < max(min_count, 1):
        return None
    return float(statistics.median(vals[-k:]))


def _robust_sigma(y: np.ndarray) -> float:
    """The noise level from successive differences (MAD / sqrt 2): a step changes one difference only."""
    d = np.diff(y)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))


def change_points(values: Sequence[float]) -> list[int]:
    """Indexes where a new level starts (each ``i``: values[i] is the first of a new segment), by
    PELT with the L1 cost over segments of >= 2 values (``ruptures.Pelt(model="l1")``)."""
    import ruptures

    y = np.asarray([float(v) for v in values], dtype=float)
    n = len(y)
    if n < 2 * MIN_SEGMENT:
        return []
    sigma = _robust_sigma(y)
    if sigma == 0:  # noiseless (a size): any real change is a step; scale only to avoid a zero penalty
        sigma = 1e-9 * max(1.0, float(np.median(np.abs(y))))
    ends = ruptures.Pelt(model="l1", min_size=MIN_SEGMENT, jump=1).fit(y).predict(pen=PENALTY_SIGMAS * sigma * np.log(n))
    return [int(i) for i in ends[:-1]]


def _environment(record_json: str) -> tuple[Optional[str], Optional[str]]:
    """(os, runner version) from a stored BenchResult JSON: run.environment.os, run.runner.version."""
    try:
        run = (json.loads(record_json) or {}).get("run") or {}
    except (ValueError, AttributeError):
        return None, None
    env, runner = run.get("environment") or {}, run.get("runner") or {}
    return env.get("os"), runner.get("version")


def _common(values: list[Optional[str]]) -> Optional[str]:
    return Counter(values).most_common(1)[0][0] if values else None


def history(db: Any, *, model: str, recipe: str, device_id: str, metric: str = "p50_ms", os: Optional[str] = None,
            runner_version: Optional[str] = None, limit: int = 50, backend: Optional[str] = None,
            format: Optional[str] = None) -> list[HistoryPoint]:
    """The cell's good results (job done, result status ok) across farm runs, one point per run (the
    median over its launches), oldest first, the last ``limit`` runs. ``os`` and ``runner_version``
    (from each stored record) keep only the launches that match; ``backend`` / ``format`` narrow
    the cell when a recipe was lowered more than one way."""
    from edgeprobe.farm.db.models import Job, Result, Run

    if metric not in METRICS:
        raise UsageError(f"history: unknown metric {metric!r}; one of {', '.join(METRICS)}")
    column = getattr(Result, metric)
    q = (select(Run.id, Run.created_utc, column, Result.record_json, Result.runner_version)
         .join(Job, Job.run_id == Run.id).join(Result, Result.job_key == Job.key)
         .where(Job.model == model, Job.recipe == recipe, Job.device_id == device_id, Job.state == "done",
                Result.status == "ok", column.is_not(None)))
    if backend is not None:
        q = q.where(Job.backend == backend)
    if format is not None:
        q = q.where(Job.format == format)
    with db.reader() as s:
        rows = s.execute(q).all()
    per_run: dict[str, list[tuple[float, Optional[str], Optional[str]]]] = defaultdict(list)
    created: dict[str, float] = {}
    for run_id, created_utc, value, record_json, column_runner in rows:
        rec_os, rec_runner = _environment(record_json)
        rec_runner = rec_runner or column_runner
        if (os is not None and rec_os != os) or (runner_version is not None and rec_runner != runner_version):
            continue
        per_run[run_id].append((float(value), rec_os, rec_runner))
        created[run_id] = created_utc
    order = sorted(per_run, key=lambda r: (created[r], r))[-limit:] if limit > 0 else []
    return [HistoryPoint(run_id=r, created_utc=created[r], value=float(statistics.median(v for v, _, _ in per_run[r])),
                         runner_version=_common([x for _, _, x in per_run[r]]), os=_common([o for _, o, _ in per_run[r]]),
                         launches=len(per_run[r]))
            for r in order]
