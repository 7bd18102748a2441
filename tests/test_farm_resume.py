"""The farm's crash safety, with real `edgeprobe farm run` processes on the local device, against
SQLite and a real PostgreSQL server: kill -9 at random points and resume (every job measured once,
no finished job measured again), two farm processes competing for one device (never leased twice at
a time, never two jobs on it at once), and Ctrl-C (once: running jobs finish, nothing new starts;
twice: running jobs go back to pending at once). The PostgreSQL cases are real-peer tests (the
``db_url`` fixture of conftest.py)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from edgeprobe.farm import jobs, leases
from edgeprobe.farm.db.engine import open_db
from edgeprobe.farm.db.models import Job, Result

EP = [sys.executable, "-m", "edgeprobe", "farm"]


def _farm(tmp_path: Path, *, launches: int, min_seconds: float = 0.0) -> Path:
    f = tmp_path / "farm.toml"
    f.write_text('[[device]]\nid = "local"\n\n[matrix]\nmodels = ["tiny_cnn"]\nrecipes = ["fp32"]\n'
                 f'launches = {launches}\niterations = 3\nwarmup = 0\nmin_seconds = {min_seconds}\n')
    return f


def _sigint_as_a_terminal_has_it() -> None:
    """In the child before exec: SIGINT's default action, as a shell's foreground job has it. A process
    started with SIGINT ignored keeps it ignored (Python then installs no KeyboardInterrupt handler), and
    pytest inherits "ignored" when it runs in a background job of a non-interactive shell (`.ci/run &`):
    every Ctrl-C test then failed with the farm finishing its run as if no Ctrl-C had come."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(farm: Path, db_url: str, run_id: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([*EP, "run", str(farm), "--db", db_url, "--run-id", run_id],
                            stdout=subprocess.PIPE, stderr=log.open("ab"), text=True,
                            preexec_fn=_sigint_as_a_terminal_has_it)


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def _results(db, run_id: str) -> dict[str, float]:
    """job key -> the result row's creation time (a result written again would change it)."""
    with db.session() as s:
        return {k: t for k, t in s.execute(select(Result.job_key, Result.created_utc).join(Job, Job.key == Result.job_key)
                                          .where(Job.run_id == run_id)).all()}


def _no_overlap(intervals: list[tuple[float, float]], what: str) -> None:
    intervals = sorted(intervals)
    for (a0, a1), (b0, b1) in zip(intervals, intervals[1:]):
        assert a1 <= b0, f"{what}: [{a0}, {a1}] overlaps [{b0}, {b1}]"


def test_kill_9_at_random_points_then_resume_measures_every_job_exactly_once(tmp_path, native_runner, db_url):
    n_jobs, kills = 24, 5
    farm, log = _farm(tmp_path, launches=n_jobs, min_seconds=0.25), tmp_path / "farm.log"  # jobs of ~0.3 s
    db = open_db(db_url)
    rng = random.Random(1301)
    kept: dict[str, float] = {}  # results seen after each kill: never rewritten by a later process
    points = []
    for k in range(kills):
        proc = _start(farm, db_url, "k9", log)
        before = len(_results(db, "k9"))
        if k == 0:  # the first one dies before any result, while it lowers or starts its first job
            delay = rng.uniform(0.5, 4.0)
            time.sleep(delay)
            points.append(f"{delay:.2f} s after start")
        else:  # the others after 1 or 2 more results, and a random part of the next job
            more = rng.choice((1, 2))
            _wait_for(lambda: len(_results(db, "k9")) >= min(before + more, n_jobs) or proc.poll() is not None,
                      180, f"{more} more results")
            time.sleep(rng.uniform(0.0, 0.3))
            points.append(f"after {more} more result(s)")
        assert proc.poll() is None, f"the farm finished before kill {k}: make the matrix longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        now = _results(db, "k9")
        assert all(now[key] == t for key, t in kept.items()), "a finished job was measured again"
        kept = now
    assert 0 < len(kept) < n_jobs, (points, len(kept))
    proc = _start(farm, db_url, "k9", log)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log.read_text()[-3000:]
    final = _results(db, "k9")
    assert len(final) == n_jobs and all(final[key] == t for key, t in kept.items())
    rows = jobs.results(db, "k9")
    assert len(rows) == n_jobs and {r["status"] for r in rows} == {"ok"} and len({r["launch"] for r in rows}) == n_jobs
    assert jobs.counts(db, "k9") == {"pending": 0, "leased": 0, "done": n_jobs, "failed": 0}
    assert "lease of a dead farm process of this host given back" in log.read_text()
    hist = leases.history(db, "local")
    assert len({h["holder"] for h in hist}) == len(hist) and all(h["released_utc"] is not None for h in hist)
    _no_overlap([(h["acquired_utc"], h["released_utc"]) for h in hist], "local's leases")
    db.close()


def test_two_farm_processes_never_hold_one_device_at_once(tmp_path, native_runner, db_url):
    farm = _farm(tmp_path, launches=4, min_seconds=2.5)  # the first holds the device ~10 s, past the second's start-up
    db = open_db(db_url)
    first = _start(farm, db_url, "ra", tmp_path / "ra.log")
    # the second starts once the first holds the device, so it must find it leased (started together,
    # the first could finish before the second had lowered, and nobody would have waited)
    _wait_for(lambda: leases.holder_of(db, "local") is not None, 180, "the first process to lease the device")
    procs = [first, _start(farm, db_url, "rb", tmp_path / "rb.log")]
    for p in procs:
        p.communicate(timeout=300)
    for run, p in zip(("ra", "rb"), procs):
        assert p.returncode == 0, (tmp_path / f"{run}.log").read_text()[-3000:]
        assert jobs.counts(db, run)["done"] == 4
    hist = leases.history(db, "local")
    holders = {h["holder"].split(":")[1] for h in hist}
    assert holders == {str(p.pid) for p in procs}, hist  # both processes held it, each in turn
    _no_overlap([(h["acquired_utc"], h["released_utc"]) for h in hist], "local's leases")
    with db.session() as s:
        spans = s.execute(select(Job.started_utc, Job.finished_utc).where(Job.device_id == "local")).all()
    assert len(spans) == 8
    _no_overlap([tuple(x) for x in spans], "jobs on local")
    waited = [p for run in ("ra", "rb") if "waiting up to" in (p := (tmp_path / f"{run}.log").read_text())]
    assert len(waited) == 1  # one waited for the other's lease instead of giving up
    db.close()


def test_ctrl_c_once_finishes_running_jobs_and_marks_the_run_interrupted(tmp_path, native_runner, db_url):
    farm, log = _farm(tmp_path, launches=6, min_seconds=1.0), tmp_path / "farm.log"
    db = open_db(db_url)
    proc = _start(farm, db_url, "c1", log)
    _wait_for(lambda: jobs.counts(db, "c1")["done"] >= 1, 180, "a first result")
    _wait_for(lambda: jobs.counts(db, "c1")["leased"] == 1, 30, "the next job to start")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log.read_text()[-3000:]
    assert "resume with --run-id c1" in out and "no new job starts" in log.read_text()
    counts = jobs.counts(db, "c1")
    assert counts["leased"] == 0 and counts["done"] >= 2 and counts["pending"] >= 1, counts  # the running one finished
    assert jobs.run_state(db, "c1") == "interrupted" and leases.holder_of(db, "local") is None
    proc = _start(farm, db_url, "c1", log)
    proc.communicate(timeout=300)
    assert proc.returncode == 0 and jobs.counts(db, "c1")["done"] == 6 and len(_results(db, "c1")) == 6
    db.close()


def test_ctrl_c_twice_gives_the_running_job_back_at_once(tmp_path, native_runner, db_url):
    farm, log = _farm(tmp_path, launches=3, min_seconds=8.0), tmp_path / "farm.log"
    db = open_db(db_url)
    proc = _start(farm, db_url, "c2", log)
    _wait_for(lambda: jobs.counts(db, "c2")["leased"] == 1, 180, "a job to start")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _wait_for(lambda: "no new job starts" in log.read_text(), 30, "the first Ctrl-C to be seen")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - t0 < 6, log.read_text()[-3000:]  # not the 8 s job
    assert jobs.counts(db, "c2") == {"pending": 3, "leased": 0, "done": 0, "failed": 0}
    assert {r["attempts"] for r in jobs.results(db, "c2")} == {0}  # the interrupted attempt is not counted
    assert "1 running job(s) back to pending" in log.read_text() and leases.holder_of(db, "local") is None
    db.close()


def test_ctrl_c_while_lowering_marks_the_run_interrupted(tmp_path, db_url):
    farm, log = tmp_path / "farm.toml", tmp_path / "farm.log"
    farm.write_text('[[device]]\nid = "local"\n\n[matrix]\nmodels = ["mobilenet_v2"]\nrecipes = ["int8"]\n')
    proc = _start(farm, db_url, "c3", log)
    _wait_for(lambda: "lowering mobilenet_v2/int8" in log.read_text(), 120, "the lowering to start")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    # the whole story on failure: CI3 once saw returncode -2 (died of SIGINT) with the log ending at the
    # lowering line; not reproduced with SIGINT 0-30 s into the lowering (/proc/self/status keeps SIGINT
    # caught through a whole int8 lowering), so the next failure must say what the process printed
    why = f"returncode {proc.returncode}; stdout {out[-1500:]!r}; log {log.read_text()[-3000:]}"
    assert proc.returncode == 130 and "resume with --run-id c3" in out, why
    db = open_db(db_url)
    assert jobs.run_state(db, "c3") == "interrupted" and sum(jobs.counts(db, "c3").values()) == 0  # no job yet
    db.close()
