"""The ``host_lost`` fault of a farm over several hosts, through ``run_farm`` on sessions over the
in-package mock transport (fast; the same on a real Ray cluster in network namespaces is
tests/test_farm_ray.py): a host that dies mid-run has its jobs finished on the equivalent devices of
another host, each job stored once, the dead host's devices are neither quarantined nor given work
again, and jobs no live device can take fail with the reason instead of waiting."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from edgeprobe import errors
from edgeprobe.devices.mock import MockRun, MockTransport, ok_record
from edgeprobe.devices.registry import Device
from edgeprobe.farm import faults, fleet, jobs
from edgeprobe.farm.db.engine import open_db
from edgeprobe.farm.inventory import DeviceEntry, parse_farm
from edgeprobe.farm.scheduler import run_farm
from edgeprobe.session import MeasureSession

LAUNCHES = 4


class Lab:
    """Two hosts, two devices each (all with the same labels). Host ``b`` dies, for good, when its
    ``die_after``-th measurement starts: that call and every later call on ``b`` raise HostLostError,
    as RemoteSession does once Ray reports the actor or its node dead."""

    def __init__(self, die_after: int) -> None:
        self.die_after = die_after
        self.lock = threading.Lock()
        self.measured: dict[str, int] = {}
        self.b_calls = 0
        self.lost_calls: dict[str, int] = {}

    def opener(self, entry: DeviceEntry, _format: str):
        lab = self

        def answer(run: MockRun):
            with lab.lock:
                if entry.host == "b":
                    lab.b_calls += 1
                    if lab.b_calls >= lab.die_after:
                        lab.lost_calls[entry.id] = lab.lost_calls.get(entry.id, 0) + 1
                        raise errors.HostLostError(f"{entry.id}: lost its host mid-job (ActorDiedError)")
                lab.measured[entry.id] = lab.measured.get(entry.id, 0) + 1
            run.write_record(ok_record(latencies_ms=[2.0, 2.1, 1.9]))
            return run.ok()

        return MeasureSession(Device(entry.id, MockTransport(answer), "python"))


def _farm(tmp_path, hosts=("a", "b")):
    farm = parse_farm(f'''
[matrix]
models = ["tiny_cnn"]
recipes = ["fp32"]
launches = {LAUNCHES}
iterations = 3
warmup = 0
''', str(tmp_path / "farm.toml"), devices_listed=False)
    devices = tuple(DeviceEntry(f"{h}/d{i}", {"tier": "phone"}, None, 0, f"ray agent {h}", host=h)
                    for h in hosts for i in (1, 2))
    return dataclasses.replace(farm, devices=devices)


@pytest.fixture()
def db(db_url):
    d = open_db(db_url)
    yield d
    d.close()


def test_a_host_lost_mid_run_has_its_jobs_finished_on_another_host_each_stored_once(tmp_path, db):
    lab, lines = Lab(die_after=2), []
    summary = run_farm(_farm(tmp_path), db=db, run_id="h1", opener=lab.opener, log=lines.append)
    rows = jobs.results(db, "h1")
    assert len(rows) == 4 * LAUNCHES and len({r["key"] for r in rows}) == len(rows)
    assert all(r["state"] == "done" for r in rows), rows
    assert summary.exit_code == 0 and summary.state == "done", summary
    # each job has exactly one result row, measured where the row says
    with db.reader() as s:
        from sqlalchemy import func, select

        from edgeprobe.farm.db.models import Result
        assert s.execute(select(func.count()).select_from(Result)).scalar() == len(rows)
    assert sum(lab.measured.values()) == len(rows)
    # b measured one job before it died; everything else was measured on a
    on_b = [r for r in rows if r["device"].startswith("b/")]
    assert len(on_b) == 1 and lab.measured.get("b/d1", 0) + lab.measured.get("b/d2", 0) == 1
    # the job that was running when b died says so, and took a second attempt elsewhere
    lost = [r for r in rows if r["fault_class"] == faults.HOST_LOST]
    assert lost and all(r["device"].startswith("a/") and r["attempts"] == 2 for r in lost), lost
    # no job moved from one of b's devices to the other: each of b's devices failed once, then stopped
    assert all(n == 1 for n in lab.lost_calls.values()), lab.lost_calls
    # a host loss is not the device's fault: no failure streak, no quarantine
    for dev in ("b/d1", "b/d2"):
        h = fleet.health(db, dev)
        assert h.status == fleet.OK and h.consecutive_failures == 0, h
    assert any("host lost" in n for n in summary.notes), summary.notes


def test_jobs_that_no_live_device_can_take_fail_with_the_reason(tmp_path, db):
    lab = Lab(die_after=1)  # b is gone from the start; a is not in this run
    summary = run_farm(_farm(tmp_path, hosts=("b",)), db=db, run_id="h2", opener=lab.opener)
    rows = jobs.results(db, "h2")
    assert len(rows) == 2 * LAUNCHES and all(r["state"] == "failed" for r in rows), rows
    assert all(r["fault_class"] == faults.HOST_LOST for r in rows)
    assert all("lost its host" in (r["error"] or "") for r in rows), [r["error"] for r in rows]
    assert summary.state == "failed" and summary.exit_code == 1
    assert sum(lab.lost_calls.values()) == 2  # one try per device, not one per job


def test_host_lost_is_its_own_class_and_policy():
    assert faults.classify_exception(errors.HostLostError("x")) == faults.HOST_LOST
    p = faults.POLICIES[faults.HOST_LOST]
    assert p.retries_same_device == 0 and p.move_to_equivalent and not p.infrastructure


# ---- the parts of `farm run --ray` / `farm agent` that need no cluster ------------------------------

def test_device_resources_are_ray_names_unique_per_host_and_device():
    from edgeprobe.farm.executors.ray import device_resource

    names = {device_resource(h, d) for h in ("w1", "w2", "w1 ") for d in ("local", "adb:127.0.0.1:5555", "adb:127.0.0.1_5555")}
    assert len(names) == 9
    assert all(n.startswith("edgeprobe_device_") and n.replace("_", "").isalnum() for n in names)
    assert device_resource("w1", "local") == device_resource("w1", "local")  # stable: the driver recomputes nothing


def test_farm_run_with_ray_missing_says_how_to_install_it(tmp_path):
    import subprocess
    import sys

    farm = tmp_path / "farm.toml"
    farm.write_text('[matrix]\nmodels = ["tiny_cnn"]\n')
    code = ("import sys; sys.modules['ray'] = None\n"  # what an install without the [ray] extra looks like
            "from edgeprobe.cli.main import main; sys.exit(main())")
    p = subprocess.run([sys.executable, "-c", code, "farm", "run", str(farm), "--ray", "127.0.0.1:6379",
                        "--db", f"sqlite:///{tmp_path / 'f.sqlite'}"], capture_output=True, text=True, timeout=120)
    text = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 2 and "pip install 'edgeprobe[ray]'" in text, text
    assert "Traceback" not in p.stderr


def test_a_farm_on_ray_refuses_devices_listed_in_its_own_file(tmp_path):
    from edgeprobe.errors import UsageError
    from edgeprobe.farm.executors.ray import cluster_farm

    farm = parse_farm('[[device]]\nid = "local"\n\n[matrix]\nmodels = ["tiny_cnn"]\n', str(tmp_path / "f.toml"))
    with pytest.raises(UsageError, match="takes its devices from the agents.*remove the \\[\\[device\\]\\] tables"):
        cluster_farm(farm, wait_s=0)
    discovering = parse_farm('discover = true\n\n[matrix]\nmodels = ["tiny_cnn"]\n', str(tmp_path / "d.toml"))
    with pytest.raises(UsageError, match="remove discover = true"):
        cluster_farm(discovering, wait_s=0)


def test_an_agent_device_file_needs_device_tables_and_may_hold_a_matrix(tmp_path):
    from edgeprobe.errors import UsageError
    from edgeprobe.farm.inventory import load_devices

    empty = tmp_path / "empty.toml"
    empty.write_text('[matrix]\nmodels = ["tiny_cnn"]\n')
    with pytest.raises(UsageError, match="no \\[\\[device\\]\\] tables"):
        load_devices(empty)
    both = tmp_path / "both.toml"
    both.write_text('[[device]]\nid = "local"\nlabels = { tier = "x86" }\n\n[matrix]\nmodels = ["tiny_cnn"]\n')
    (d,) = load_devices(both)
    assert d.id == "local" and dict(d.labels) == {"tier": "x86"}
    bad = tmp_path / "bad.toml"
    bad.write_text('[[device]]\nid = "local"\ntoken = "secret"\n')
    with pytest.raises(UsageError, match="bad.toml:3: tokens never go in the farm file"):
        load_devices(bad)


def test_an_agent_offers_only_its_healthy_devices():
    from edgeprobe.farm.agent import inventory
    from edgeprobe.farm.health import Probe

    entries = (DeviceEntry("local", {"tier": "x86"}), DeviceEntry("adb:10.0.0.2:5555", {"tier": "phone"}))
    probes = {"local": Probe(True, "Linux x86_64 host", None, None, None),
              "adb:10.0.0.2:5555": Probe(False, "", None, None, None, "ConnectionRefusedError: refused")}
    rows = inventory("w1", entries, lambda e: probes[e.id])
    assert [r["healthy"] for r in rows] == [True, False]
    assert rows[1]["health"] == "unreachable: ConnectionRefusedError: refused"
    assert rows[0]["resource"] != rows[1]["resource"] and rows[0]["labels"] == {"tier": "x86"}


class _StubActor:
    class _M:
        def remote(self):
            return "ref"

    ready = _M()


class _StubDevices:
    """What RemoteSession._when_decided reads of RayDevices; ``answers`` is what each ray.get does."""

    def __init__(self, answers, wait_s=5.0):
        import types

        self.answers, self.forgotten = list(answers), []
        self.facts = {"w1/d1": {"node_id": "n1"}}
        self.unavailable_wait_s = wait_s

        def get(_ref, timeout=None):
            a = self.answers.pop(0) if self.answers else self.answers_default
            if a is None:
                raise AssertionError("ray.get called more often than the test expected")
            if isinstance(a, BaseException):
                raise a
            return a

        self.answers_default = None
        self._ray = types.SimpleNamespace(get=get)

    def forget(self, device_id):
        self.forgotten.append(device_id)


@pytest.mark.parametrize("node_alive, answers, expected, forgotten", [
    # Ray declares the node dead while we wait: the host is lost, the job moves
    ([True, False], ["unavailable"], errors.HostLostError, True),
    # the actor answers again: a connection lost mid-job (device_lost), retried on the same device
    ([True, True], ["unavailable", {"node_id": "n1"}], errors.TransportError, False),
    # neither within the wait: treated as lost
    ("always", ["unavailable"] * 3, errors.HostLostError, True),
])
def test_after_actor_unavailable_the_driver_waits_for_rays_decision(monkeypatch, node_alive, answers, expected,
                                                                    forgotten):
    pytest.importorskip("ray")
    from ray import exceptions as rex

    from edgeprobe.farm.executors import ray as on_ray

    alive = iter(node_alive) if node_alive != "always" else None
    monkeypatch.setattr(on_ray, "node_alive", lambda _n: True if alive is None else next(alive))
    monkeypatch.setattr(on_ray.time, "sleep", lambda _s: None)
    devices = _StubDevices([rex.GetTimeoutError() if a == "unavailable" else a for a in answers],
                           wait_s=0.5 if node_alive == "always" else 60.0)
    devices.answers_default = rex.GetTimeoutError()
    session = on_ray.RemoteSession(devices, "w1/d1", "pte")
    err = session._when_decided(_StubActor(), rex.ActorUnavailableError("may or may not have been executed", None))
    assert type(err) is expected, err
    assert bool(devices.forgotten) == forgotten
