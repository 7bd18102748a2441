"""The farm end to end on real devices of this machine: local, a test adbd (the real ADB protocol)
and an `edgeprobe runner serve` over TCP, journalled in SQLite; a resumed run measures nothing twice,
and a device that drops its connection mid-run has its job retried."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adbd import TestAdbd
from farmkit import TOKEN, tcp_runner  # noqa: F401 - a fixture
from edgeprobe.farm import fleet, jobs, leases
from edgeprobe.farm.db.engine import open_db
from edgeprobe.farm.inventory import parse_farm
from edgeprobe.farm.scheduler import run_farm

def _farm(path, adb_port, tcp_where, *, launches=2):
    text = f'''
[[device]]
id = "local"
labels = {{ tier = "host" }}

[[device]]
id = "adb:127.0.0.1:{adb_port}"
labels = {{ tier = "phone" }}

[[device]]
id = "tcp:{tcp_where}"
token_env = "LAB_TOKEN"

[matrix]
models = ["tiny_cnn", "digits_cnn"]
recipes = ["fp32", "int8"]
devices = ["*"]
launches = {launches}
iterations = 3
warmup = 1
'''
    return parse_farm(text, str(path))


@pytest.mark.real_peer("adb")
def test_a_farm_of_three_devices_measures_every_cell_once_and_resumes_without_repeating(
        tmp_path, monkeypatch, native_runner, tcp_runner, db_url):
    monkeypatch.setenv("LAB_TOKEN", TOKEN)
    monkeypatch.setenv("EDGEPROBE_ADB_KEY", str(tmp_path / "keys" / "adbkey"))
    db = open_db(db_url)
    with TestAdbd(tmp_path / "dev", drop_on_shell="--iterations", drop_times=1) as adbd:
        farm = _farm(tmp_path / "farm.toml", adbd.port, tcp_runner)
        lines: list[str] = []
        summary = run_farm(farm, db=db, run_id="r1", log=lines.append)
        assert summary.exit_code == 0, (summary.counts, [l for l in lines if "fail" in l])
        rows = jobs.results(db, "r1")
        assert len(rows) == 2 * 2 * 3 * 2 and {r["status"] for r in rows} == {"ok"}
        cells = {(r["model"], r["recipe"], r["device"], r["launch"]) for r in rows}
        assert len(cells) == len(rows)  # one row per (model, recipe, device, launch)
        assert all(r["p50_ms"] and r["p50_ms"] > 0 and len(r["artifact_sha256"]) == 64 for r in rows)
        # the adbd dropped the connection once mid-run: that job was retried on the same device
        retried = [r for r in rows if r["attempts"] > 1]
        assert len(retried) == 1 and retried[0]["device"].startswith("adb:"), retried
        assert any("device_lost" in l and "retrying here" in l for l in lines), lines
        runs_on_adb = sum("--iterations" in c for c in adbd.shell_log)
        # resuming the finished run measures nothing again
        again = run_farm(farm, db=db, run_id="r1", log=lines.append)
        assert again.exit_code == 0 and again.counts == summary.counts
        assert sum("--iterations" in c for c in adbd.shell_log) == runs_on_adb
        assert len(jobs.results(db, "r1")) == len(rows)
    for dev in ("local", f"adb:127.0.0.1:{adbd.port}", f"tcp:{tcp_runner}"):
        assert leases.holder_of(db, dev) is None  # every lease released at the end
        # the devices table holds each device's labels and the environment block of its records
        h = fleet.health(db, dev)
        assert h.environment["machine"] and h.last_seen_utc and h.consecutive_failures == 0
    assert fleet.health(db, "local").labels == {"tier": "host"}
    with db.session() as s:  # every result links to a recorded artifact
        from sqlalchemy import select

        from edgeprobe.farm.db.models import Artifact, Result
        shas = set(s.scalars(select(Result.artifact_sha256)))
        assert shas == set(s.scalars(select(Artifact.artifact_sha256))) and len(shas) == 4


def test_a_group_that_does_not_lower_becomes_failed_rows_and_the_rest_is_measured(tmp_path):
    db = open_db(f"sqlite:///{tmp_path / 'farm.sqlite'}")
    farm = parse_farm('''
[[device]]
id = "local"

[matrix]
models = ["tiny_cnn", "no_such_model_xyz"]
recipes = ["fp32"]
iterations = 2
warmup = 0
min_seconds = 60.0
max_iterations = 4
''', str(tmp_path / "farm.toml"))
    summary = run_farm(farm, db=db, run_id="r2")
    rows = {r["model"]: r for r in jobs.results(db, "r2")}
    assert summary.exit_code == 1 and set(summary.lowering_errors) == {"no_such_model_xyz/fp32/xnnpack/pte"}
    assert rows["tiny_cnn"]["status"] == "ok"
    # the farm file's max_iterations reaches the runner: 4 timed iterations, not 60 s of them
    with db.session() as s:
        from sqlalchemy import select

        from edgeprobe.farm.db.models import Job
        key = s.execute(select(Job.key).where(Job.run_id == "r2", Job.model == "tiny_cnn")).scalar()
    rec = jobs.record(db, key)
    assert len(rec["run"]["timing"]["iteration_ns"]) == 4 and rec["run"]["config"]["max_iterations"] == 4
    assert rows["no_such_model_xyz"]["status"] != "ok" and rows["no_such_model_xyz"]["fault_class"] == "model_error"
    assert rows["no_such_model_xyz"]["attempts"] == 1  # never retried


def test_farm_cli_run_then_results_json(tmp_path):
    farm = tmp_path / "farm.toml"
    farm.write_text('[[device]]\nid = "local"\n\n[matrix]\nmodels = ["tiny_cnn"]\nrecipes = ["fp32", "int8"]\n'
                    'launches = 2\niterations = 2\nwarmup = 0\n')
    db = f"sqlite:///{tmp_path / 'farm.sqlite'}"
    ep = [sys.executable, "-m", "edgeprobe", "farm"]
    p = subprocess.run([*ep, "run", str(farm), "--db", db, "--run-id", "cli1"], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "run cli1: pending 0, leased 0, done 4, failed 0" in p.stdout, p.stdout
    p = subprocess.run([*ep, "results", "cli1", "--db", db, "--json"], capture_output=True, text=True, timeout=120)
    rows = json.loads(p.stdout)
    assert sorted((r["recipe"], r["launch"]) for r in rows) == [("fp32", 0), ("fp32", 1), ("int8", 0), ("int8", 1)]
    for r in rows:
        assert r["model"] == "tiny_cnn" and r["device"] == "local" and r["status"] == "ok"
        assert r["fault_class"] is None and r["attempts"] == 1 and r["p50_ms"] > 0 and len(r["artifact_sha256"]) == 64
    p = subprocess.run([*ep, "status", "--db", db], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("cli1  done") and "done 4" in p.stdout, p.stdout
    p = subprocess.run([*ep, "status", "nope", "--db", db], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "no run 'nope'" in " ".join(p.stderr.split())
    farm.write_text('[[device]]\nid = "local"\n\n[matrix]\nmodels = ["tiny_cnn"]\niteratons = 2\n')
    p = subprocess.run([*ep, "run", str(farm), "--db", db], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and f"{farm}:6: unknown key 'iteratons'" in " ".join(p.stderr.split()), p.stderr


def test_a_worker_whose_lease_was_taken_over_stops_before_claiming(tmp_path):
    """Two farm processes never use one device at once: a worker that finds its lease gone (it
    expired and another holder took it) claims nothing more."""
    from edgeprobe.farm.worker import LEASE_LOST, Limits, Worker

    db = open_db(f"sqlite:///{tmp_path / 'farm.sqlite'}")
    farm = parse_farm('[[device]]\nid = "local"\n\n[matrix]\nmodels = ["tiny_cnn"]\n', str(tmp_path / "f.toml"))
    from edgeprobe.farm.matrix import expand

    jobs.add_run(db, "r3", "f.toml")
    jobs.add_jobs(db, "r3", expand(farm, {g: "k" for g in [("tiny_cnn", "fp32", "xnnpack", "pte")]}))
    lines: list[str] = []
    real_acquire = leases.acquire

    def acquire_then_lose(db_, device_id, holder, ttl_s, **kw):
        ok = real_acquire(db_, device_id, holder, ttl_s, **kw)
        # the lease expires at once and another process takes the device
        assert real_acquire(db_, device_id, "other-farm", 60.0, clock=lambda: 1e12)
        return ok

    leases.acquire = acquire_then_lose
    try:
        w = Worker(db, "r3", farm.devices[0], "me", [], {}, {}, Limits(3, 0.001, 0.0, 3, 60.0), lines.append)
        assert w() == LEASE_LOST
    finally:
        leases.acquire = real_acquire
    assert any("lease lost" in line for line in lines), lines
    assert jobs.counts(db, "r3")["pending"] == 1  # nothing was claimed


@pytest.mark.real_peer("adb", "zeroconf")
def test_discover_true_adds_what_edgeprobe_devices_finds(tmp_path, monkeypatch, native_runner):
    """A farm file listing only `local`, with discover = true: a test adbd (listed in
    $EDGEPROBE_ADB_ADDRESSES) and a runner advertised over zeroconf on loopback are found, opened
    by what `edgeprobe devices` calls them, and measured."""
    name = f"farm-zc-{tmp_path.name[-12:]}"
    monkeypatch.setenv("EDGEPROBE_ZEROCONF_INTERFACES", "127.0.0.1")
    monkeypatch.setenv("EDGEPROBE_TOKEN", TOKEN)
    monkeypatch.setenv("EDGEPROBE_ADB_KEY", str(tmp_path / "keys" / "adbkey"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeprobe", "runner", "serve", "--host", "127.0.0.1", "--port", "0", "--token", TOKEN,
         "--name", name, "--workdir", str(tmp_path / "zcdev"), "--native-runner", str(native_runner)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline(), proc.stderr.read()
        with TestAdbd(tmp_path / "dev") as adbd:
            monkeypatch.setenv("EDGEPROBE_ADB_ADDRESSES", f"127.0.0.1:{adbd.port}")
            farm = parse_farm('discover = true\n\n[[device]]\nid = "local"\n\n[matrix]\nmodels = ["tiny_cnn"]\n'
                              'recipes = ["fp32"]\niterations = 2\nwarmup = 0\n', str(tmp_path / "farm.toml"))
            db = open_db(f"sqlite:///{tmp_path / 'farm.sqlite'}")
            lines: list[str] = []
            summary = run_farm(farm, db=db, run_id="d1", log=lines.append)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    devices = {r["device"]: r["status"] for r in jobs.results(db, "d1")}
    assert devices.get(f"adb:127.0.0.1:{adbd.port}") == "ok" and devices.get(name) == "ok", (devices, lines)
    assert devices["local"] == "ok" and summary.exit_code == 0
    assert any(line.startswith(f"discovered {name}") for line in lines)


def test_a_matrix_of_two_formats_measures_each_with_its_own_runner(tmp_path, native_runner):
    """pte runs on the native runner and ptl on the Python runner: one device's worker keeps a
    session per format (one session for both ran the .ptl on the native runner, a host_error)."""
    db = open_db(f"sqlite:///{tmp_path / 'farm.sqlite'}")
    farm = parse_farm('[[device]]\nid = "local"\n\n[matrix]\nmodels = ["tiny_cnn"]\nformats = ["pte", "ptl"]\nbackends = ["xnnpack", "cpu"]\n'
                      'iterations = 2\nwarmup = 0\n', str(tmp_path / "farm.toml"))
    summary = run_farm(farm, db=db, run_id="fmt")
    rows = {r["format"]: r for r in jobs.results(db, "fmt")}
    assert summary.exit_code == 0 and {f: r["status"] for f, r in rows.items()} == {"pte": "ok", "ptl": "ok"}, rows
    flavors = {f: jobs.record(db, r["key"])["run"]["runner"]["flavor"] for f, r in rows.items()}
    assert flavors == {"pte": "native", "ptl": "python"}
