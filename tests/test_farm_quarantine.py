"""Quarantine with expiry and probation, through ``run_farm`` on sessions over the in-package mock
transport (the real-device fault suite is tests/test_farm_inject.py), journalled in SQLite and a
real PostgreSQL: a device that crashes its runner ``quarantine_after`` times in a row is quarantined
(kept across runs, visible in ``farm quarantine``), gets no work while it lasts, must pass a health
check once it has run out, and can be released by hand."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from edgeprobe.devices.mock import MockRun, MockTransport, ok_record
from edgeprobe.devices.registry import Device
from edgeprobe.farm import fleet, jobs
from edgeprobe.farm.db.engine import open_db
from edgeprobe.farm.inventory import parse_farm
from edgeprobe.farm.scheduler import run_farm
from edgeprobe.session import MeasureSession

BAD, GOOD = "tcp:127.0.0.1:7001", "tcp:127.0.0.1:7002"  # ids only: the opener below never dials them


class Lab:
    """Two mock devices with the same labels; ``broken`` says whether BAD's runner crashes."""

    def __init__(self) -> None:
        self.broken = True
        self.runs: dict[str, int] = {BAD: 0, GOOD: 0}

    def handler(self, device_id: str):
        def answer(run: MockRun):
            self.runs[device_id] += 1
            if device_id == BAD and self.broken:
                return run.exit(-11, stderr="Segmentation fault (core dumped)")
            run.write_record(ok_record(latencies_ms=[2.0, 2.1, 1.9]))
            return run.ok()
        return answer

    def opener(self, entry, _format):
        return MeasureSession(Device(entry.id, MockTransport(self.handler(entry.id)), "python"))


def _farm(tmp_path, launches=3):
    return parse_farm(f'''
[[device]]
id = "{BAD}"
labels = {{ soc = "sd8g3" }}

[[device]]
id = "{GOOD}"
labels = {{ soc = "sd8g3" }}

[matrix]
models = ["tiny_cnn"]
recipes = ["fp32"]
launches = {launches}
iterations = 3
warmup = 0
''', str(tmp_path / "farm.toml"))


def test_repeated_crashes_quarantine_a_device_until_it_passes_a_health_check(tmp_path, db_url):
    db, lab, farm, lines = open_db(db_url), Lab(), _farm(tmp_path), []
    opts = {"opener": lab.opener, "quarantine_after": 2, "quarantine_s": 60.0, "log": lines.append}
    first = run_farm(farm, db=db, run_id="q1", **opts)
    h = fleet.health(db, BAD)
    assert h.status == fleet.QUARANTINED and h.consecutive_failures == 2 and "runner_crash" in h.quarantine_reason
    assert 55 < h.quarantined_until - time.time() <= 60
    rows = jobs.results(db, "q1")
    crashed = [r for r in rows if r["state"] == "failed"]
    # the first job crashed twice (retried once), then failed with the runner's stderr tail; BAD's
    # other jobs moved to GOOD, its equivalent, and were measured there
    assert len(crashed) == 1 and crashed[0]["fault_class"] == "runner_crash" and crashed[0]["attempts"] == 2
    assert "Segmentation fault" in crashed[0]["error"] and lab.runs[BAD] == 2
    assert [r["device"] for r in rows if r["state"] == "done"] == [GOOD] * 5 and first.exit_code == 1
    assert fleet.health(db, GOOD).status == fleet.OK and fleet.health(db, GOOD).last_seen_utc is not None

    # while quarantined (a new run): no work for BAD, its jobs go to GOOD
    second = run_farm(farm, db=db, run_id="q2", **opts)
    assert second.exit_code == 0 and lab.runs[BAD] == 2 and any(f"{BAD}: quarantined until" in l for l in lines)
    assert {r["device"] for r in jobs.results(db, "q2")} == {GOOD}

    # the quarantine runs out while BAD is still broken: its health check fails, quarantined again
    fleet.quarantine(db, BAD, quarantine_s=-1.0, reason="expired for the test")
    assert fleet.health(db, BAD).status == fleet.PROBATION
    run_farm(farm, db=db, run_id="q3", **opts)
    assert lab.runs[BAD] == 3 and fleet.health(db, BAD).status == fleet.QUARANTINED  # one run: the check
    assert "health check failed" in fleet.health(db, BAD).quarantine_reason

    # repaired, and run out again: the health check passes and BAD takes its own jobs
    lab.broken = False
    fleet.quarantine(db, BAD, quarantine_s=-1.0, reason="expired for the test")
    fourth = run_farm(farm, db=db, run_id="q4", **opts)
    assert fourth.exit_code == 0 and any(f"{BAD}: health check passed" in l for l in lines)
    assert fleet.health(db, BAD).status == fleet.OK and fleet.health(db, BAD).consecutive_failures == 0
    assert sum(r["device"] == BAD for r in jobs.results(db, "q4")) == 3 and lab.runs[BAD] == 3 + 1 + 3
    db.close()


def test_a_success_ends_the_failure_streak(tmp_path, db_url):
    """Faults must be in a row: crash, measure, crash is a streak of 1, not 2."""
    db, lab = open_db(db_url), Lab()
    calls = iter([True, False, True, False, False, False])

    def flaky(entry, _format):
        def answer(run: MockRun):
            if entry.id == BAD and next(calls):
                return run.exit(-11, stderr="crash")
            run.write_record(ok_record())
            return run.ok()
        return MeasureSession(Device(entry.id, MockTransport(answer), "python"))

    run_farm(_farm(tmp_path), db=db, run_id="s1", opener=flaky, quarantine_after=2)
    assert fleet.health(db, BAD).status == fleet.OK
    assert all(r["state"] == "done" for r in jobs.results(db, "s1"))
    db.close()


def test_farm_quarantine_lists_and_releases_by_hand(tmp_path, db_url):
    db = open_db(db_url)
    fleet.register(db, _farm(tmp_path).devices)
    fleet.quarantine(db, BAD, quarantine_s=3600.0, reason="3 infrastructure faults in a row, the last timeout")
    db.close()
    ep = [sys.executable, "-m", "edgeprobe", "farm", "quarantine", "--db", db_url]
    p = subprocess.run(ep, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and f"{BAD}: quarantined until" in p.stdout and "the last timeout" in p.stdout
    assert GOOD not in p.stdout
    p = subprocess.run([*ep, "--release", BAD], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "quarantine lifted" in p.stdout, p.stderr
    p = subprocess.run([*ep, "--release", BAD], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "is not quarantined" in p.stderr
    db = open_db(db_url)
    assert fleet.health(db, BAD).status == fleet.OK and fleet.health(db, BAD).consecutive_failures == 0
    db.close()


@pytest.mark.parametrize("json_out", [True, False])
def test_farm_devices_shows_health_lease_and_quarantine(tmp_path, json_out):
    import json

    db_url = f"sqlite:///{tmp_path / 'f.sqlite'}"
    farm = tmp_path / "farm.toml"
    farm.write_text('[[device]]\nid = "local"\nlabels = { tier = "host" }\n\n[[device]]\nid = "adb:127.0.0.1:1"\n\n'
                    '[matrix]\nmodels = ["tiny_cnn"]\n')
    db = open_db(db_url)
    fleet.register(db, parse_farm(farm.read_text(), str(farm)).devices)
    fleet.quarantine(db, "adb:127.0.0.1:1", quarantine_s=600.0, reason="device_lost three times")
    db.close()
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "farm", "devices", str(farm), "--db", db_url,
                        *(["--json"] if json_out else [])], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    if json_out:
        rows = {r["device"]: r for r in json.loads(p.stdout)}
        assert rows["local"]["reachable"] and rows["local"]["quarantine"] == "ok" and rows["local"]["lease"] is None
        assert rows["local"]["labels"] == {"tier": "host"}
        bad = rows["adb:127.0.0.1:1"]
        assert not bad["reachable"] and bad["error"] and bad["quarantine"] == "quarantined"
        assert bad["quarantine_reason"] == "device_lost three times"
    else:
        assert "tier=host" in p.stdout and "unreachable" in p.stdout and "device_lost three times" in p.stdout
