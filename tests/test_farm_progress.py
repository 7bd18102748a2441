"""The farm's live progress, read from a real SQLite journal (and PostgreSQL for the median): counts, current
job, ETA, the table, the Live wrapper."""

from __future__ import annotations

import io
import itertools
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from rich.console import Console
from sqlalchemy import text

from edgeprobe.farm import jobs, progress
from edgeprobe.farm.db.engine import open_db
from edgeprobe.farm.progress import LiveProgress, render, snapshot
from pg import fresh_database  # tests/ is on sys.path (rootdir conftest)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_names = itertools.count()


@pytest.fixture
def db(tmp_path):
    d = open_db(f"sqlite:///{tmp_path / 'f.sqlite'}")
    yield d
    d.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.real_peer("postgresql"))])
def any_db(request, tmp_path):
    """The median is window functions in SQL: checked on both dialects."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'f.sqlite'}"
    else:
        url = fresh_database(request.getfixturevalue("pg_cluster"), f"progress{os.getpid()}_{next(_names)}")
    d = open_db(url)
    yield d
    d.close()


def _job(key, device, launch=0, model="tiny_cnn", recipe="fp32"):
    cell = SimpleNamespace(model=model, recipe=recipe, backend="xnnpack", format="pte", device_id=device)
    return SimpleNamespace(key=key, cell=cell, launch=launch, settings={"iterations": 10}, artifact_key=None)


def _run(db, per_device: dict[str, int], run_id="run1"):
    """``per_device[d]`` jobs on each device d, launches 0.., created in that order (the claim order)."""
    jobs.add_run(db, run_id, "farm.toml", now=1.0)
    made = [_job(f"{d}-{i}", d, launch=i, recipe="int8" if i % 2 else "fp32")
            for d, n in per_device.items() for i in range(n)]
    assert jobs.add_jobs(db, run_id, made, now=1.0) == len(made)


def _do(db, device, start, took_s, state="done", run_id="run1"):
    job = jobs.claim(db, run_id, device, "w", 600, now=start)
    assert job is not None
    assert jobs.finish(db, job.key, "w", state=state, now=start + took_s)
    return job


def _by_id(p):
    return {d.device_id: d for d in p.devices}


def test_counts_per_device_after_claims_and_finishes(db):
    _run(db, {"dev-a": 5, "dev-b": 3, "dev-c": 2})
    _do(db, "dev-a", 10.0, 2.0)
    _do(db, "dev-a", 12.0, 2.0, state="failed")
    _do(db, "dev-a", 14.0, 2.0)
    jobs.claim(db, "run1", "dev-a", "w", 600, now=16.0)  # leased: still left
    _do(db, "dev-b", 10.0, 1.0, state="failed")
    retried = jobs.claim(db, "run1", "dev-b", "w", 600, now=11.0)
    jobs.finish(db, retried.key, "w", state="pending", now=12.0)  # given back for a retry: left again
    jobs.add_run(db, "run2", "other.toml")
    jobs.add_jobs(db, "run2", [_job("other-0", "dev-a")])  # another run's job is not counted
    p = snapshot(db, "run1", now=20.0)
    got = {d.device_id: (d.done, d.failed, d.left) for d in p.devices}
    assert got == {"dev-a": (2, 1, 2), "dev-b": (0, 1, 2), "dev-c": (0, 0, 2)}
    assert (p.done, p.failed, p.left, p.total) == (2, 2, 6, 10)


def test_the_current_job_is_the_leased_one_with_its_running_time(db):
    _run(db, {"dev-a": 3, "dev-b": 2})
    _do(db, "dev-a", 10.0, 2.0)  # launch 0, done
    leased = jobs.claim(db, "run1", "dev-a", "w", 600, now=13.0)
    assert leased.launch == 1
    p = _by_id(snapshot(db, "run1", now=20.5))
    assert p["dev-a"].current == "tiny_cnn/int8 #1"
    assert p["dev-a"].current_running_s == pytest.approx(7.5)
    assert p["dev-b"].current is None and p["dev-b"].current_running_s is None
    jobs.finish(db, leased.key, "w", state="done", now=21.0)
    assert _by_id(snapshot(db, "run1", now=22.0))["dev-a"].current is None  # finished: idle again


def test_eta_is_none_before_any_finish_then_median_duration_times_left(any_db):
    db = any_db
    _run(db, {"dev-a": 6, "dev-b": 6, "dev-c": 1})
    jobs.claim(db, "run1", "dev-a", "w", 600, now=10.0)
    p = snapshot(db, "run1", now=11.0)
    assert all(d.eta_s is None for d in p.devices) and p.eta_s is None
    jobs.finish(db, jobs.claim(db, "run1", "dev-c", "w", 600, now=10.0).key, "w", state="done", now=15.0)
    p = _by_id(snapshot(db, "run1", now=16.0))
    assert p["dev-a"].eta_s is None  # still nothing finished on dev-a: no estimate from dev-c's jobs
    assert p["dev-c"].eta_s == 0.0  # nothing left there
    # dev-a: the leased job finishes after 10 s, then 2 more (odd count: the middle one, 10)
    jobs.finish(db, jobs.claim(db, "run1", "dev-a", "w", 600, now=10.0).key, "w", state="done", now=20.0)
    _do(db, "dev-a", 20.0, 30.0)
    _do(db, "dev-a", 50.0, 4.0, state="failed")  # a failed job took device time too
    # dev-b: an even count (1, 3, 5, 100): the mean of the middle two, 4; the outlier does not move it
    for start, took in ((10.0, 1.0), (11.0, 100.0), (111.0, 3.0), (114.0, 5.0)):
        _do(db, "dev-b", start, took)
    run = snapshot(db, "run1", now=120.0)
    p = _by_id(run)
    assert p["dev-a"].median_job_s == pytest.approx(10.0) and p["dev-a"].left == 3
    assert p["dev-a"].eta_s == pytest.approx(30.0)
    assert p["dev-b"].median_job_s == pytest.approx(4.0) and p["dev-b"].left == 2
    assert p["dev-b"].eta_s == pytest.approx(8.0)
    assert run.eta_s == pytest.approx(30.0)  # devices run in parallel: the slowest one


def test_the_table_shows_each_device_its_counts_and_the_estimate(db):
    _run(db, {"dev-a": 3, "adb:127.0.0.1:5555": 2})
    _do(db, "dev-a", 10.0, 20.0)
    jobs.claim(db, "run1", "dev-a", "w", 600, now=30.0)
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, width=120).print(render(snapshot(db, "run1", now=42.0)))
    out = ANSI.sub("", buf.getvalue())
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in out.splitlines() if line.count("│") == 7}
    assert rows["dev-a"] == ["tiny_cnn/int8 #1 (12 s)", "1", "0", "2", "~40 s"]
    assert rows["adb:127.0.0.1:5555"] == ["idle", "0", "0", "2", "—"]
    assert rows["total"] == ["", "1", "0", "4", "—"]  # a device has no estimate yet: neither has the run
    assert "farm run run1: 1/5 jobs" in out


def test_before_its_jobs_are_added_the_run_shows_no_jobs_and_no_estimate(db):
    jobs.add_run(db, "run1", "farm.toml")  # run_farm adds the jobs only after lowering every group
    p = snapshot(db, "run1")
    assert (p.devices, p.total, p.eta_s) == ((), 0, None)
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, width=120).print(render(p))
    out = ANSI.sub("", buf.getvalue())
    assert "(no jobs yet)" in out and "~" not in out


def test_durations_read_as_people_write_them():
    assert [progress.duration(s) for s in (None, 4.4, 59.6, 185, 7620)] == ["—", "4 s", "1m 00s", "3m 05s", "2h 07m"]


def test_a_snapshot_of_10000_jobs_is_a_few_queries(db, capsys):
    devices = [f"dev-{i}" for i in range(8)]
    _run(db, {d: 1250 for d in devices})
    # half of each device's jobs done (durations 1..625 s, median 313 s), one leased, the rest pending
    with db.session() as s:
        s.execute(text("UPDATE jobs SET state='done', started_utc=100.0, finished_utc=100.0 + launch + 1 "
                       "WHERE launch < 625"))
        s.execute(text("UPDATE jobs SET state='leased', started_utc=900.0 WHERE launch = 625"))
    statements = []
    from sqlalchemy import event

    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    t0 = time.perf_counter()
    p = snapshot(db, "run1", now=1000.0)
    took_ms = (time.perf_counter() - t0) * 1e3
    with capsys.disabled():
        print(f"\nsnapshot of 10000 jobs on 8 devices: {took_ms:.1f} ms, {len(statements)} statements")
    assert len([q for q in statements if q.lstrip().upper().startswith("SELECT")]) == 3
    median = statistics.median(range(1, 626))
    assert len(p.devices) == 8 and (p.done, p.failed, p.left) == (5000, 0, 5000)
    assert all(d.median_job_s == pytest.approx(median) and d.eta_s == pytest.approx(median * 625) for d in p.devices)
    assert all(d.current == "tiny_cnn/int8 #625" for d in p.devices)


def _progress_threads():
    return [t for t in threading.enumerate() if t.name.startswith("edgeprobe-farm-progress")]


def test_not_a_terminal_starts_no_thread_and_prints_nothing(db):
    _run(db, {"dev-a": 2})
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False)
    assert not console.is_terminal
    with LiveProgress(db, "run1", console, interval_s=0.01) as live:
        assert not live.active and _progress_threads() == []
        _do(db, "dev-a", 10.0, 1.0)
        time.sleep(0.05)
    assert buf.getvalue() == "" and live.last is None


def _last_row(out: str, name: str) -> list[str]:
    lines = [line for line in ANSI.sub("", out).splitlines() if line.count("│") == 7
             and line.split("│")[1].strip() == name]
    assert lines, out[-2000:]
    return [c.strip() for c in lines[-1].split("│")[2:-1]]


def test_on_a_terminal_the_final_table_shows_the_final_counts(db):
    _run(db, {"dev-a": 3, "dev-b": 1})
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with LiveProgress(db, "run1", console, interval_s=60.0) as live:  # no poll in between: the exit draws it
        assert live.active and len(_progress_threads()) == 1
        assert _last_row(buf.getvalue(), "dev-a")[1:4] == ["0", "0", "3"]  # drawn at once
        now = time.time()
        _do(db, "dev-a", now, 0.2)
        _do(db, "dev-a", now + 0.2, 0.2, state="failed")
        _do(db, "dev-b", now, 1.0)
    assert _progress_threads() == [] and not live.active
    assert _last_row(buf.getvalue(), "dev-a")[1:] == ["1", "1", "1", "~0 s"]
    assert _last_row(buf.getvalue(), "dev-b")[1:] == ["1", "0", "0", "~0 s"]
    assert _last_row(buf.getvalue(), "total")[1:4] == ["2", "1", "1"]
    assert (live.last.done, live.last.failed, live.last.left) == (2, 1, 1)


def test_a_failing_poll_skips_its_tick_and_the_display_goes_on(db, monkeypatch):
    _run(db, {"dev-a": 2})
    real, calls = progress.snapshot, []

    def flaky(*a, **k):
        calls.append(1)
        if 2 <= len(calls) <= 4:
            raise RuntimeError("database is locked")
        return real(*a, **k)

    monkeypatch.setattr(progress, "snapshot", flaky)
    buf = io.StringIO()
    with LiveProgress(db, "run1", Console(file=buf, force_terminal=True, width=120), interval_s=0.01) as live:
        deadline = time.time() + 10
        while len(calls) < 6 and time.time() < deadline:
            time.sleep(0.01)
        assert live.skipped_ticks == 3 and _progress_threads()[0].is_alive()
        _do(db, "dev-a", time.time(), 0.1)
    assert _last_row(buf.getvalue(), "dev-a")[1:4] == ["1", "0", "1"]


def test_importing_it_imports_no_torch():
    code = "import sys, edgeprobe.farm.progress; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'executorch'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
