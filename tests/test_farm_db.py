"""The farm database on SQLite and on a real PostgreSQL cluster: migrations, the job journal, and device leases across processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from sqlalchemy import inspect, text

from edgeprobe.errors import UsageError
from edgeprobe.farm import jobs, leases
from edgeprobe.farm.db.engine import FarmDatabaseError, head_revision, open_db

TABLES = {"runs", "devices", "artifacts", "jobs", "results", "device_leases", "lease_history"}


@pytest.fixture
def db(db_url):
    d = open_db(db_url)
    yield d
    d.close()


def _job(key, device="dev-a", launch=0, model="tiny_cnn"):
    cell = SimpleNamespace(model=model, recipe="fp32", backend="xnnpack", format="pte", device_id=device)
    return SimpleNamespace(key=key, cell=cell, launch=launch, settings={"iterations": 10}, artifact_key=None)


def _run_with(db, *keys, device="dev-a"):
    jobs.add_run(db, "run1", "farm.toml")
    return jobs.add_jobs(db, "run1", [_job(k, device) for k in keys])


def test_migrations_create_the_schema(db):
    assert TABLES <= set(inspect(db.engine).get_table_names())
    with db.engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
    open_db(db.engine.url.render_as_string(hide_password=False)).close()  # a second open is a no-op upgrade


def test_the_models_match_the_migrations(db):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from edgeprobe.farm.db.models import Base

    with db.engine.connect() as c:
        assert compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata) == []


def test_several_processes_may_open_a_new_database_at_once(db_url):
    code = "import sys; from edgeprobe.farm.db.engine import open_db; open_db(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for e in errs]
    d = open_db(db_url)
    with d.engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head_revision()]
    d.close()


def test_sqlite_connections_use_wal(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_FARM_DB", f"sqlite:///{tmp_path / 'env.sqlite'}")
    d = open_db(None)
    assert d.url.endswith("env.sqlite")
    with d.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    d.close()


def test_a_newer_schema_is_refused_naming_both_revisions(db_url):
    open_db(db_url).close()
    d = open_db(db_url)
    with d.engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    d.close()
    with pytest.raises(UsageError) as e:
        open_db(db_url)
    msg = str(e.value)
    assert "9999_future" in msg and head_revision() in msg and "upgrade edgeprobe" in msg and "\n" not in msg


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("url", ["nosuch://farm:s3cret@host/db",
                                 "postgresql+psycopg://farm:s3cret@127.0.0.1:{port}/db",
                                 "sqlite:////proc/self/nope/farm.sqlite"])
def test_an_unopenable_url_is_one_line_without_the_password(url):
    url = url.format(port=_free_port())
    with pytest.raises(FarmDatabaseError) as e:
        open_db(url)
    msg = str(e.value)
    assert "s3cret" not in msg and "\n" not in msg and "cannot open the farm database" in msg, msg
    assert url.replace("s3cret", "***") in msg, msg


def test_add_jobs_is_idempotent(db):
    assert _run_with(db, "k1", "k2") == 2
    job = jobs.claim(db, "run1", "dev-a", "w1", 60)
    assert jobs.finish(db, job.key, "w1", state="done", record_json="{}", p50_ms=1.0)
    assert jobs.add_jobs(db, "run1", [_job("k1"), _job("k2"), _job("k3")]) == 1  # a rerun: only the new one
    assert jobs.counts(db, "run1") == {"pending": 2, "leased": 0, "done": 1, "failed": 0}
    rows = {r["key"]: r for r in jobs.results(db, "run1")}
    assert rows[job.key]["status"] == "ok" and rows[job.key]["attempts"] == 1


def test_claim_then_finish(db):
    _run_with(db, "k1")
    jobs.add_jobs(db, "run1", [_job("k2", device="dev-b")])
    job = jobs.claim(db, "run1", "dev-a", "w1", 60, now=100.0)
    assert (job.key, job.state, job.lease_holder, job.attempts, job.lease_expires_utc) == ("k1", "leased", "w1", 1, 160.0)
    assert job.settings == {"iterations": 10}
    assert jobs.claim(db, "run1", "dev-a", "w2", 60, now=101.0) is None  # dev-b's job is not dev-a's
    assert not jobs.finish(db, "k1", "w2", state="done", record_json="{}")  # not w2's job
    record = json.dumps({"schema_version": 1, "run": {"status": "ok", "timing": {"iteration_ns": [1, 2, 3]}}})
    assert jobs.finish(db, "k1", "w1", state="done", record_json=record, p50_ms=2.5, p90_ms=3.0, mean_ms=2.6,
                       peak_rss_delta_bytes=5 << 33, artifact_sha256="ab" * 32, runner_version="1.0")
    assert jobs.record(db, "k1") == json.loads(record)
    b = jobs.claim(db, "run1", "dev-b", "w3", 60)
    assert jobs.finish(db, b.key, "w3", state="failed", fault_class="device_offline", error="adb: device offline")
    rows = {r["key"]: r for r in jobs.results(db, "run1")}
    assert rows["k1"]["status"] == "ok" and rows["k1"]["p50_ms"] == 2.5 and rows["k1"]["device"] == "dev-a"
    assert rows["k1"]["peak_rss_delta_bytes"] == 5 << 33 and rows["k1"]["artifact_sha256"] == "ab" * 32
    assert rows["k2"]["status"] == "device_offline" and rows["k2"]["p50_ms"] is None and rows["k2"]["state"] == "failed"
    assert {"model", "recipe", "device", "launch", "status", "fault_class", "attempts", "p50_ms",
            "artifact_sha256"} <= set(rows["k1"])
    assert jobs.counts(db, "run1") == {"pending": 0, "leased": 0, "done": 1, "failed": 1}


def test_finishing_twice_stores_one_result(db):
    _run_with(db, "k1")
    jobs.claim(db, "run1", "dev-a", "w1", 60)
    assert jobs.finish(db, "k1", "w1", state="done", record_json='{"n": 1}', p50_ms=1.0)
    assert not jobs.finish(db, "k1", "w1", state="done", record_json='{"n": 2}', p50_ms=2.0)
    assert not jobs.finish(db, "k1", "w1", state="failed", fault_class="x")
    with db.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM results")).scalar() == 1
    assert jobs.record(db, "k1") == {"n": 1}
    assert jobs.counts(db, "run1")["done"] == 1


def test_result_fields_from_a_bench_result():
    stats = SimpleNamespace(p50_ms=1.5, p90_ms=2.0, mean_ms=1.6)
    r = SimpleNamespace(stats=stats, to_json=lambda: "{}", manifest=SimpleNamespace(artifact_sha256="cd"),
                        run=SimpleNamespace(status="ok", memory=SimpleNamespace(peak_rss_delta_bytes=7),
                                            runner=SimpleNamespace(version="2.0")))
    assert jobs.result_fields(r) == {"record_json": "{}", "status": "ok", "p50_ms": 1.5, "p90_ms": 2.0,
                                     "mean_ms": 1.6, "peak_rss_delta_bytes": 7, "artifact_sha256": "cd",
                                     "runner_version": "2.0"}


def test_expired_job_leases_are_requeued_or_claimed_again(db):
    _run_with(db, "k1", "k2")
    a = jobs.claim(db, "run1", "dev-a", "dead", 10, now=100.0)
    b = jobs.claim(db, "run1", "dev-a", "dead", 10, now=100.0)
    assert {a.key, b.key} == {"k1", "k2"}
    assert jobs.claim(db, "run1", "dev-a", "w2", 10, now=105.0) is None  # both still leased
    assert jobs.requeue_expired(db, "run1", now=105.0) == 0
    again = jobs.claim(db, "run1", "dev-a", "w2", 10, now=111.0)  # an expired lease is claimable directly
    assert again.lease_holder == "w2" and again.attempts == 2
    assert jobs.requeue_expired(db, "run1", now=111.0) == 1
    assert jobs.counts(db, "run1") == {"pending": 1, "leased": 1, "done": 0, "failed": 0}
    assert not jobs.finish(db, a.key if again.key == b.key else b.key, "dead", state="done", record_json="{}")
    assert jobs.claim(db, "run1", "dev-a", "w3", 10, now=112.0).attempts == 2


def test_reassign_moves_only_pending_jobs(db):
    _run_with(db, "k1", "k2")
    held = jobs.claim(db, "run1", "dev-a", "w1", 60)
    other = "k2" if held.key == "k1" else "k1"
    assert not jobs.reassign(db, held.key, "dev-b")
    assert jobs.reassign(db, other, "dev-b")
    assert jobs.claim(db, "run1", "dev-a", "w1", 60) is None
    assert jobs.claim(db, "run1", "dev-b", "w2", 60).key == other


def test_an_expired_lease_can_be_taken_over_and_a_live_one_cannot(db):
    assert leases.acquire(db, "dev-a", "h1", 10, clock=lambda: 100.0)
    assert not leases.acquire(db, "dev-a", "h2", 10, clock=lambda: 105.0)
    assert not leases.acquire(db, "dev-a", "h1", 10, clock=lambda: 105.0)  # not re-entrant either
    assert leases.holder_of(db, "dev-a", clock=lambda: 105.0) == "h1"
    assert leases.holder_of(db, "dev-a", clock=lambda: 111.0) is None
    assert leases.acquire(db, "dev-a", "h2", 10, clock=lambda: 111.0)
    assert leases.holder_of(db, "dev-a", clock=lambda: 112.0) == "h2"
    assert not leases.release(db, "dev-a", "h1", clock=lambda: 112.0)
    assert leases.release(db, "dev-a", "h2", clock=lambda: 113.0)
    assert leases.holder_of(db, "dev-a", clock=lambda: 113.0) is None
    assert [(h["holder"], h["acquired_utc"], h["released_utc"]) for h in leases.history(db, "dev-a")] == \
        [("h1", 100.0, 110.0), ("h2", 111.0, 113.0)]


def test_heartbeat_extends_only_the_holders_live_lease(db):
    assert leases.acquire(db, "dev-a", "h1", 10, clock=lambda: 100.0)
    assert not leases.heartbeat(db, "dev-a", "h2", 10, clock=lambda: 105.0)
    assert leases.heartbeat(db, "dev-a", "h1", 10, clock=lambda: 108.0)
    assert not leases.acquire(db, "dev-a", "h2", 10, clock=lambda: 115.0)  # extended to 118
    assert leases.history(db, "dev-a")[0]["expires_utc"] == 118.0
    assert not leases.heartbeat(db, "dev-a", "h1", 10, clock=lambda: 119.0)  # expired: lost
    assert not leases.heartbeat(db, "dev-b", "h1", 10, clock=lambda: 119.0)  # never held


HAMMER = textwrap.dedent("""
    import random, sys, time
    from edgeprobe.farm import leases
    from edgeprobe.farm.db.engine import open_db
    url, holder, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    db = open_db(url)
    print("ready", flush=True)
    sys.stdin.readline()  # all start together
    until, wins = time.time() + seconds, 0
    while time.time() < until:
        device = random.choice(["dev-a", "dev-b"])
        if not leases.acquire(db, device, holder, 0.05):
            continue
        wins += 1
        time.sleep(random.uniform(0, 0.01))
        r = random.random()
        if r < 0.3:
            leases.heartbeat(db, device, holder, 0.05)
        if r < 0.7:
            leases.release(db, device, holder)  # else it lapses, as if its holder died
    print(wins)
""")


def test_leases_are_exclusive_across_processes(db, db_url):
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, db_url, f"p{i}", "3"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    ready = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    assert ready == ["ready"] * 4 and all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    wins = [int(out) for out, _ in outs]
    hist = leases.history(db)
    assert sum(wins) == len(hist) and sum(wins) >= 20, wins
    for device in ("dev-a", "dev-b"):
        rows = [h for h in hist if h["device_id"] == device]
        assert len({h["holder"] for h in rows}) > 1, f"{device}: only one process ever won it"
        for prev, nxt in zip(rows, rows[1:]):
            end = prev["released_utc"] if prev["released_utc"] is not None else prev["expires_utc"]
            assert nxt["acquired_utc"] >= end, f"{device}: {nxt['holder']} acquired while {prev['holder']} held it"
    assert any(h["released_utc"] == h["expires_utc"] for h in hist), "no lease ever lapsed and was taken over"


def test_sqlite_readers_do_not_wait_for_a_writer(tmp_path):
    """Watching a run (progress, status) must not queue behind the workers' write transactions:
    a read while another connection holds the write lock answers at once (it waited for the
    30 s busy timeout when every transaction began IMMEDIATE)."""
    import threading
    import time

    db = open_db(f"sqlite:///{tmp_path / 'farm.sqlite'}")
    jobs.add_run(db, "r", "f.toml")
    out: dict = {}
    with db.session() as s:
        s.execute(text("UPDATE runs SET state = 'running' WHERE id = 'r'"))  # holds the write lock
        t0 = time.monotonic()
        t = threading.Thread(target=lambda: out.update(state=jobs.run_state(db, "r"), counts=jobs.counts(db, "r")))
        t.start()
        t.join(5)
        waited_s = time.monotonic() - t0
    assert out.get("state") == "running" and out["counts"]["pending"] == 0 and waited_s < 2
    db.close()
