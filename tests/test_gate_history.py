"""History against a real SQLite farm database (runs, jobs and results made through farm.jobs), the
baseline rule, and change points on series with and without a step."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from edgeprobe.errors import UsageError
from edgeprobe.farm import jobs
from edgeprobe.farm.db.engine import open_db
from edgeprobe.gate.history import HistoryPoint, baseline_of, change_points, history


@pytest.fixture
def db(tmp_path):
    d = open_db(f"sqlite:///{tmp_path}/f.sqlite")
    yield d
    d.close()


def _record(os_name: str, runner_version: str) -> str:
    """The parts of a stored BenchResult that history reads: run.environment.os, run.runner.version."""
    return json.dumps({"schema_version": 1, "run": {"status": "ok", "environment": {"os": os_name},
                                                    "runner": {"flavor": "native", "version": runner_version}}})


def _farm_run(db, run_id: str, created_utc: float, launches: list[float], *, model: str = "tiny_cnn",
              device: str = "pixel-7", os_name: str = "Android 14", runner_version: str = "0.3",
              status: str = "ok", failed: int = 0) -> None:
    """A run of one cell with a launch per value (and ``failed`` extra launches that failed)."""
    jobs.add_run(db, run_id, "farm.toml", now=created_utc)
    cell = SimpleNamespace(model=model, recipe="int8", backend="xnnpack", format="pte", device_id=device)
    total = len(launches) + failed
    jobs.add_jobs(db, run_id, [SimpleNamespace(key=f"{run_id}-{model}-{device}-{i}", cell=cell, launch=i,
                                               settings=None, artifact_key=None) for i in range(total)],
                  now=created_utc)
    for i in range(total):
        job = jobs.claim(db, run_id, device, "worker", 60.0)
        if job.launch >= len(launches):
            jobs.finish(db, job.key, "worker", state="failed", fault_class="runner_crash", error="boom")
            continue
        jobs.finish(db, job.key, "worker", state="done", record_json=_record(os_name, runner_version),
                    status=status, p50_ms=launches[job.launch], p90_ms=launches[job.launch] * 1.1,
                    runner_version=runner_version)


def test_history_is_one_median_per_good_run_oldest_first(db):
    _farm_run(db, "r2", 2000.0, [11.0, 12.0, 13.0], failed=1)
    _farm_run(db, "r1", 1000.0, [10.0, 10.5, 9.5, 30.0, 10.2])
    _farm_run(db, "r3", 3000.0, [20.0, 20.0], status="error")  # measured an error: not good
    _farm_run(db, "r4", 4000.0, [14.0], model="other_model")
    _farm_run(db, "r5", 5000.0, [15.0], device="pixel-8")
    points = history(db, model="tiny_cnn", recipe="int8", device_id="pixel-7")
    assert points == [HistoryPoint("r1", 1000.0, 10.2, "0.3", "Android 14", 5),
                      HistoryPoint("r2", 2000.0, 12.0, "0.3", "Android 14", 3)]
    p90 = history(db, model="tiny_cnn", recipe="int8", device_id="pixel-7", metric="p90_ms")
    assert [p.value for p in p90] == pytest.approx([10.2 * 1.1, 12.0 * 1.1])
    assert history(db, model="tiny_cnn", recipe="int8", device_id="pixel-7", backend="vulkan") == []
    assert history(db, model="tiny_cnn", recipe="fp32", device_id="pixel-7") == []
    with pytest.raises(UsageError, match="unknown metric"):
        history(db, model="tiny_cnn", recipe="int8", device_id="pixel-7", metric="latency")


def test_history_filters_by_os_and_runner_and_keeps_the_last_runs(db):
    for i in range(6):
        _farm_run(db, f"r{i}", 1000.0 + i, [10.0 + i], os_name="Android 14" if i < 4 else "Android 15",
                  runner_version="0.3" if i % 2 else "0.4")
    cell = dict(model="tiny_cnn", recipe="int8", device_id="pixel-7")
    assert [p.run_id for p in history(db, **cell, os="Android 15")] == ["r4", "r5"]
    assert [p.run_id for p in history(db, **cell, runner_version="0.4")] == ["r0", "r2", "r4"]
    assert [p.run_id for p in history(db, **cell, os="Android 14", runner_version="0.3")] == ["r1", "r3"]
    assert [p.run_id for p in history(db, **cell, limit=2)] == ["r4", "r5"]
    assert {p.os for p in history(db, **cell)} == {"Android 14", "Android 15"}


def test_baseline_of_is_the_median_of_the_last_k_with_a_minimum_count():
    assert baseline_of([100, 1, 2, 3, 4, 50]) == 3  # the last 5: 1, 2, 3, 4, 50
    assert baseline_of([5.0, 7.0, 6.0]) == 6.0
    assert baseline_of([5.0, 7.0]) is None
    assert baseline_of([5.0, 7.0], min_count=2) == 6.0
    assert baseline_of([]) is None
    assert baseline_of([1, 2, 3, 4, 5, 6, 7], k=3) == 6


def test_a_step_is_found_at_the_index_where_the_new_level_starts(db):
    rng = np.random.default_rng(1)
    series = np.r_[20 * rng.lognormal(0, 0.03, 14), 22 * rng.lognormal(0, 0.03, 10)]  # +10 % at run 14
    for i, v in enumerate(series):
        _farm_run(db, f"run{i:02d}", 1000.0 + i, [v * 0.99, v, v * 1.01])
    points = history(db, model="tiny_cnn", recipe="int8", device_id="pixel-7")
    assert [p.value for p in points] == pytest.approx(list(series))
    assert change_points([p.value for p in points]) == [14]
    assert baseline_of([p.value for p in points]) == pytest.approx(float(np.median(series[-5:])))


def test_steps_over_many_series():
    rng = np.random.default_rng(2)
    exact = near = total = 0
    for n in range(12, 61, 4):
        for _ in range(10):
            k = n // 2
            found = change_points(np.r_[20 * rng.lognormal(0, 0.03, k), 22 * rng.lognormal(0, 0.03, n - k)])
            exact += found == [k]
            near += len(found) == 1 and abs(found[0] - k) <= 1
            total += 1
    print(f"\n10 % step (3 % noise), 12..60 runs: at the exact index {exact / total:.2f}, within one {near / total:.2f}")
    assert near / total >= 0.85
    assert change_points([10, 10, 10, 10, 20, 20, 20, 20]) == [4]  # noiseless (e.g. a size)
    assert change_points([10, 10, 10, 20, 20, 20, 30, 30, 30]) == [3, 6]


def test_no_change_points_on_flat_noise():
    rng = np.random.default_rng(3)
    flagged = total = 0
    for n in range(10, 61, 5):
        for _ in range(20):
            flagged += bool(change_points(20 * rng.lognormal(0, 0.03, n)))
            total += 1
    print(f"\nflat 3 % noise, 10..60 runs: a change point in {flagged / total:.3f} of {total} series")
    assert flagged / total <= 0.02
    assert change_points([5.0] * 20) == [] and change_points([1.0, 2.0, 3.0]) == []
    one_outlier = 20 * rng.lognormal(0, 0.03, 30)
    one_outlier[15] *= 1.5
    assert change_points(one_outlier) == []
