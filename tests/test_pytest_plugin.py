"""The pytest plugin (``edgeprobe.pytest_plugin``) in separate pytest runs over a small user project,
loaded as installed (entry point ``pytest11``): budgets pass and fail with the measured numbers and
the device, no device skips, results land in the farm database; and the plugin stays inert."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = '''
import pytest


def test_measures(edgeprobe_measure):
    result = edgeprobe_measure("tiny_cnn", idle_s=0)
    assert result.ok and result.stats.n == 3
    assert result.request.command == "bench" and result.request.args["device"] == "local"


@pytest.mark.edgeprobe_budget(p50_ms=60000, p90_ms=60000, peak_mib=100000)
def test_within_budget(edgeprobe_measure):
    edgeprobe_measure("tiny_cnn", idle_s=0, warmup=1)


@pytest.mark.edgeprobe_budget(p50_ms=0.000001)
def test_over_budget(edgeprobe_measure):
    edgeprobe_measure("tiny_cnn", idle_s=0)


def test_without_the_fixture():
    pass
'''

MISUSE_TESTS = '''
import pytest


@pytest.mark.edgeprobe_budget(p50_ms=1)
def test_budget_but_no_measurement():
    pass


@pytest.mark.edgeprobe_budget(p50=1)
def test_unknown_budget():
    pass
'''


def test_budgets_pass_and_fail_with_the_numbers_and_the_device_and_land_in_the_database(
        pytester: pytest.Pytester, tiny_pte, native_runner, monkeypatch: pytest.MonkeyPatch):
    """One pytest run of the user project on ``local`` (tiny_cnn is lowered once, by tiny_pte, and
    cached); the ``native_runner`` fixture's EDGEPROBE_RUNNER_DIR reaches the subprocess."""
    monkeypatch.delenv("EDGEPROBE_FARM_DB", raising=False)
    pytester.makepyfile(test_model=USER_TESTS)
    url = f"sqlite:///{pytester.path / 'farm.sqlite'}"
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers", "--edgeprobe-device", "local",
                                        "--edgeprobe-iterations", "3", "--edgeprobe-db", url)
    out = res.stdout.str()
    res.assert_outcomes(passed=3, failed=1)
    assert "FAILED test_model.py::test_over_budget" in out, out
    assert "edgeprobe budget exceeded on local: p50 " in out and " ms > 1e-06 ms" in out, out
    assert "measured: tiny_cnn (pte/xnnpack, 3 iterations) on local: p50 " in out, out
    # the summary table, and one device session for all three measurements
    assert "edgeprobe measurements" in out and "3 measurement(s) in 1 device session(s)" in out, out

    from edgeprobe.farm import jobs
    from edgeprobe.farm.db.engine import open_db

    db = open_db(url)
    try:
        (run,) = jobs.runs(db)
        assert run["id"].startswith("pytest-") and run["state"] == "done" and run["counts"]["done"] == 3
        assert f"stored as farm run {run['id']}" in out, out
        rows = jobs.results(db, run["id"])
        assert {r["status"] for r in rows} == {"ok"} and {r["device"] for r in rows} == {"local"}
        assert len(rows) == 3 and all(r["model"] == "tiny_cnn" and r["p50_ms"] > 0 for r in rows)
        record = jobs.record(db, rows[0]["key"])
        assert record["request"]["command"] == "bench" and record["run"]["timing"]["iteration_ns"]
    finally:
        db.close()
    # what `edgeprobe farm results RUN` lists
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "farm", "results", run["id"], "--db", url, "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)) == 3


def test_a_metric_the_device_did_not_measure_fails_with_the_reason(tiny_pte, native_runner):
    from edgeprobe.api import bench
    from edgeprobe.pytest_plugin import check_budget

    result = bench(tiny_pte, iterations=3, warmup=1, idle_s=0)
    budget = {"p50_ms": 60000.0, "peak_mib": 100000.0}
    assert check_budget([result], budget) == []
    no_memory = dataclasses.replace(result, run=dataclasses.replace(result.run, memory=None))
    problems = check_budget([no_memory], budget)
    assert problems[0] == "edgeprobe budget peak_mib on local: not measured: the runner reported no memory", problems
    assert problems[1].startswith("measured: tiny_cnn") and "peak not measured" in problems[1], problems


def test_without_a_device_the_measuring_tests_are_skipped_with_the_reason(pytester: pytest.Pytester,
                                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("EDGEPROBE_DEVICE", raising=False)
    monkeypatch.delenv("EDGEPROBE_FARM_DB", raising=False)
    pytester.makepyfile(test_model=USER_TESTS, test_misuse=MISUSE_TESTS)
    res = pytester.runpytest_subprocess("-rs", "--strict-markers", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, skipped=3, failed=2)
    out = res.stdout.str()
    assert "no edgeprobe device: pass --edgeprobe-device D (or set $EDGEPROBE_DEVICE) to measure" in out
    assert "edgeprobe_budget on a test that measured nothing" in out
    assert "edgeprobe_budget: unknown budget 'p50'; known: p50_ms, p90_ms, p99_ms, peak_mib" in out
    assert "edgeprobe measurements" not in out  # nothing measured: no summary


def test_the_plugin_is_registered_and_inert_until_used():
    from importlib.metadata import entry_points

    assert [e.value for e in entry_points(group="pytest11") if e.name == "edgeprobe"] == ["edgeprobe.pytest_plugin"]
    probe = ("import sys, edgeprobe.pytest_plugin; "
             "print(sorted(m for m in ('torch', 'executorch', 'sqlalchemy', 'edgeprobe.api') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr


def test_a_token_variable_that_is_not_set_is_a_usage_error(pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("EDGEPROBE_NO_SUCH_TOKEN", raising=False)
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    res = pytester.runpytest_subprocess("--edgeprobe-token-env", "EDGEPROBE_NO_SUCH_TOKEN")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "the variable EDGEPROBE_NO_SUCH_TOKEN is not set" in res.stderr.str()

