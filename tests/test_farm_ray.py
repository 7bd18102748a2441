"""A farm over three hosts on a real Ray cluster (``farm run --ray``, ``farm agent``): the head in one
network namespace, two agent hosts in two others, joined by a bridge in a namespace of its own
(tests/ray_cluster.py). Each agent host has its own devices, in its own namespace: a test adbd on
the real ADB protocol and an ``edgeprobe runner serve`` over TCP with a token only that host's agent
holds. Both hosts' devices have the same ids (``adb:127.0.0.1:PORT`` on each host's own loopback can
even coincide): the farm names them ``HOST/ID``.

- the whole matrix is measured, each device's jobs by an actor on that device's own host;
- the device actor measures without importing torch, and a device no live node offers fails at
  once instead of waiting (Ray's default for an impossible request is to wait forever);
- a selector no agent's device matches fails within ``--ray-wait-s`` with the reason;
- killing one agent host mid-run (SIGKILL of everything in its namespace: its Ray node, its devices):
  its jobs finish on the other host's equivalent devices and the results table holds every job once.

One cluster for the module (about 10 s to start here). Real peers: netns, and Ray itself.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netns import first_line
from ray_cluster import RayClusterError, ray_available, ray_cluster

pytestmark = [pytest.mark.real_peer("ray", "netns")]

REPO = Path(__file__).resolve().parents[1]
TOKEN = "ray-farm-test-token"
# an agent host needs neither torch nor executorch's Python package nor the database's (docs/farm.md):
# the agent process runs with them made unimportable (its device actors are checked in their own process)
AGENT_WITHOUT_HEAVY_PACKAGES = (
    "import sys\n"
    "for m in ('torch', 'torchvision', 'executorch', 'sqlalchemy', 'alembic', 'scipy', 'matplotlib'):\n"
    "    sys.modules[m] = None\n"
    "from edgeprobe.cli.main import main\n"
    "sys.exit(main())\n")
HOSTS = ("w1", "w2")
HEALTH_CHECK = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                "health_check_timeout_ms": 1000, "health_check_failure_threshold": 5}


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in (path.read_text(errors="replace") if path.exists() else ""):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in {path} within {timeout_s} s (exit {proc.poll()}):\n"
                         + (path.read_text(errors="replace")[-3000:] if path.exists() else ""))


class Lab:
    def __init__(self, cluster, root: Path, native_runner: Path) -> None:
        self.c, self.root, self.native_runner = cluster, root, native_runner
        self.runner_dir = str(native_runner.parent.parent.parent)
        self.cache = root / "artifacts"  # the driver's artifact cache
        self.devices: dict[str, dict[str, str]] = {}  # host -> {"adb": id, "tcp": id}
        self.agent_logs: dict[str, Path] = {}

    def start_host(self, host: str) -> None:
        c, d = self.c, self.root / host
        d.mkdir(parents=True, exist_ok=True)
        c.add_host(host)
        adbd = c.popen(host, [sys.executable, str(REPO / "tests" / "adbd.py"), str(d / "phone")],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        adb_port = json.loads(first_line(adbd, 60))["port"]
        tcp = c.popen(host, [sys.executable, "-m", "edgeprobe", "runner", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--token", TOKEN, "--name", f"{host}-board", "--workdir", str(d / "board"),
                             "--native-runner", str(self.native_runner), "--no-zeroconf"],
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        where = json.loads(first_line(tcp, 60))["listening"]
        ids = {"adb": f"adb:127.0.0.1:{adb_port}", "tcp": f"tcp:{where}"}
        (d / "devices.toml").write_text(f'''
[[device]]
id = "{ids['adb']}"
labels = {{ tier = "phone" }}

[[device]]
id = "{ids['tcp']}"
labels = {{ tier = "board" }}
token_env = "BOARD_TOKEN"
''')
        log = self.agent_logs[host] = d / "agent.log"
        agent = c.popen(host, [sys.executable, "-c", AGENT_WITHOUT_HEAVY_PACKAGES, "farm", "agent", "--address", c.address,
                               "--devices", str(d / "devices.toml"), "--name", host, "--node-ip", c.host_addr[host],
                               "--num-cpus", "0", "--object-store-mb", "100", "--temp-dir", str(self.root / f"ray-{host}")],
                        env={"BOARD_TOKEN": TOKEN, "EDGEPROBE_ADB_KEY": str(self.root / "adbkey"),
                             "EDGEPROBE_RUNNER_DIR": self.runner_dir,
                             "EDGEPROBE_AGENT_CACHE_DIR": str(d / "agent-cache")},
                        stdout=open(log, "w"), stderr=subprocess.STDOUT)
        _wait_for(log, "device(s) offered", agent, 120)
        self.devices[host] = {k: f"{host}/{v}" for k, v in ids.items()}

    def farm_file(self, name: str, **matrix) -> Path:
        body = {"models": ["tiny_cnn"], "recipes": ["fp32"], "launches": 1, "iterations": 5, "warmup": 1, **matrix}
        lines = [f"{k} = {json.dumps(v)}" for k, v in body.items()]
        path = self.root / name
        path.write_text("[matrix]\n" + "\n".join(lines) + "\n")
        return path

    def driver_argv(self, farm: Path, db: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "edgeprobe", "farm", "run", str(farm), "--ray", self.c.address,
                "--db", f"sqlite:///{db}", *extra]

    def driver_env(self) -> dict:
        return {"EDGEPROBE_CACHE_DIR": str(self.cache), "EDGEPROBE_RUNNER_DIR": self.runner_dir}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, native_runner):
    ok, why = ray_available()
    if not ok:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("rayfarm")
    try:
        # dead after 5 missed 1 s checks (~5 s): quick enough for the kill test, and a node starved of
        # CPU for a few seconds (the driver lowering on 2 shared cores) is not declared dead for good
        with ray_cluster(prefix="rf", system_config=HEALTH_CHECK) as c:
            lab = Lab(c, root, native_runner)
            for host in HOSTS:
                lab.start_host(host)
            yield lab
    except RayClusterError as exc:  # the cluster itself could not be built: say why, with its logs
        pytest.fail(f"the Ray cluster could not be built: {exc}")


def _rows(db: Path) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("select j.key, j.device_id, j.state, j.fault_class, j.error, j.attempts, "
                                             "j.finished_utc, r.job_key as result_key from jobs j left join results r "
                                             "on r.job_key = j.key")]
    finally:
        con.close()


def _result_count(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("select count(*) from results").fetchone()[0]
    finally:
        con.close()


def test_the_whole_matrix_is_measured_on_every_host_each_device_by_an_actor_on_its_own_host(lab):
    db = lab.root / "all.sqlite"
    p = lab.c.run("head", lab.driver_argv(lab.farm_file("all.toml", launches=2), db), env=lab.driver_env(),
                  timeout=300, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr[-4000:]
    rows = _rows(db)
    every = {d for host in HOSTS for d in lab.devices[host].values()}
    assert len(rows) == 2 * len(every) and all(r["state"] == "done" and r["result_key"] for r in rows), rows
    assert {r["device_id"] for r in rows} == every
    assert _result_count(db) == len(rows)
    # each device's actor ran on its own host's node (the driver logs where each actor started)
    for host in HOSTS:
        for dev in lab.devices[host].values():
            started = [line for line in p.stderr.splitlines() if line.startswith(f"{dev}: actor started")]
            assert started and f"({lab.c.host_addr[host]}," in started[0], (dev, started, p.stderr[-3000:])


DRIVER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from edgeprobe.farm.executors import ray as on_ray
from edgeprobe.errors import HostLostError
from edgeprobe.session import MeasureConfig
on_ray.connect(sys.argv[2])
devices = on_ray.read_inventories()
board = next(d for d in devices if d.host == "w1" and d.local_id.startswith("tcp:"))
from edgeprobe.models import load_model
from edgeprobe import compress
spec = load_model("tiny_cnn")
_, _, art = compress.apply_and_lower(spec, "fp32", compress.Context(example_inputs=spec.example_inputs),
                                     module=spec.module.eval(), format="pte", backend="xnnpack")
rd = on_ray.RayDevices(devices)
session = rd(type("E", (), {"id": board.id})(), "pte")
result = session.measure(art, MeasureConfig(iterations=3, warmup=0, retries=0))
import ray
facts = ray.get(rd.actor(board.id).facts.remote(), timeout=30)
ghost = on_ray.ClusterDevice("w9/tcp:10.0.0.9:1", "w9", "tcp:10.0.0.9:1", {}, on_ray.device_resource("w9", "x"),
                             None, True, "ok")
rd2 = on_ray.RayDevices([ghost], start_timeout_s=600)
t0 = time.monotonic()
try:
    rd2.actor(ghost.id)
    ghost_error = None
except HostLostError as exc:
    ghost_error = str(exc)
print(json.dumps({"ok": result.ok, "device": result.device.id, "modules": facts["modules"],
                  "ghost_error": ghost_error, "ghost_s": time.monotonic() - t0}))
rd.shutdown()
"""


def test_an_agent_measures_without_torch_and_an_unoffered_device_fails_at_once(lab):
    p = lab.c.python("head", DRIVER, str(REPO / "host"), lab.c.address, env=lab.driver_env(), timeout=300)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["device"].startswith("tcp:127.0.0.1:"), out
    # the actor ran the measurement on the agent host without importing torch, torchvision or executorch
    assert out["modules"] == [], out
    # an actor for a resource no live node has: Ray would wait forever; the placement check does not
    assert out["ghost_error"] and "no live Ray node offers it" in out["ghost_error"] and out["ghost_s"] < 10, out


def test_farm_devices_lists_what_the_agents_offer(lab):
    p = lab.c.run("head", [sys.executable, "-m", "edgeprobe", "farm", "devices", "--ray", lab.c.address, "--json",
                           "--db", f"sqlite:///{lab.root / 'devices.sqlite'}"], env=lab.driver_env(), timeout=120,
                  capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {r["device"]: r for r in json.loads(p.stdout)}
    assert set(rows) == {dev for host in HOSTS for dev in lab.devices[host].values()}, rows
    for host in HOSTS:
        phone, board = rows[lab.devices[host]["adb"]], rows[lab.devices[host]["tcp"]]
        assert phone["host"] == host and phone["labels"] == {"tier": "phone"} and phone["reachable"], phone
        assert "test-adbd" in phone["description"] and board["labels"] == {"tier": "board"}, (phone, board)


def test_a_selector_no_agent_offers_fails_within_its_wait_with_the_reason(lab):
    db = lab.root / "none.sqlite"
    t0 = time.monotonic()
    p = lab.c.run("head", lab.driver_argv(lab.farm_file("gpu.toml", devices=["tier=gpu"]), db, "--ray-wait-s", "3"),
                  env=lab.driver_env(), timeout=120, capture_output=True, text=True)
    wall_s = time.monotonic() - t0
    assert p.returncode == 2, p.stdout + p.stderr
    text = " ".join((p.stdout + p.stderr).split())
    assert "'tier=gpu' matches no device" in text and "after waiting 3 s" in text, text
    assert all(dev in text for host in HOSTS for dev in lab.devices[host].values()), text  # it says what is offered
    assert wall_s < 3 + 45, wall_s  # the wait, plus starting Python and joining the cluster


def test_a_second_agent_with_a_name_in_use_is_refused_and_leaves_no_node(lab):
    c, d = lab.c, lab.root / "w3"
    d.mkdir(exist_ok=True)
    (d / "devices.toml").write_text('[[device]]\nid = "local"\nlabels = { tier = "x86" }\n')
    c.add_host("w3")
    t0 = time.monotonic()
    p = c.run("w3", [sys.executable, "-c", AGENT_WITHOUT_HEAVY_PACKAGES, "farm", "agent", "--address", c.address,
                     "--devices", str(d / "devices.toml"), "--name", "w1", "--node-ip", c.host_addr["w3"],
                     "--num-cpus", "0", "--object-store-mb", "100", "--temp-dir", str(lab.root / "ray-w3")],
              timeout=180, capture_output=True, text=True)
    text = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 2 and "agent name 'w1' is taken by another live node" in text, text[-3000:]
    assert time.monotonic() - t0 < 60, "a name in use is not worth retrying: it must fail at once"
    # w1's own inventory is untouched, and the refused agent's node left the cluster
    out = c.python("head", "import json, ray; from edgeprobe.farm.executors import ray as r; r.connect(__import__('os')"
                   ".environ['RAY_ADDRESS']); print(json.dumps([d.id for d in r.read_inventories()]))",
                   env=lab.driver_env(), timeout=120).stdout.strip().splitlines()[-1]
    assert set(json.loads(out)) == {dev for host in HOSTS for dev in lab.devices[host].values()}, out
    c.wait_nodes(dead_hosts=["w3"], timeout_s=60)


def test_a_host_killed_mid_run_has_its_jobs_finished_on_the_other_host_each_stored_once(lab):
    db = lab.root / "kill.sqlite"
    farm = lab.farm_file("kill.toml", launches=4, iterations=20, min_seconds=1.0)
    log = lab.root / "kill-driver.log"
    with open(log, "w") as out:
        driver = lab.c.popen("head", lab.driver_argv(farm, db, "--max-attempts", "4"), env=lab.driver_env(),
                             stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # until one of w1's devices has measured a job
            if db.exists():
                try:
                    if any(r["state"] == "done" and r["device_id"].startswith("w1/") for r in _rows(db)):
                        break
                except sqlite3.OperationalError:  # the schema is still being made
                    pass
            assert driver.poll() is None, log.read_text()[-4000:]
            time.sleep(0.2)
        else:
            raise AssertionError("no job done on w1 within 240 s:\n" + log.read_text()[-4000:])
        killed_at = time.time()
        lab.c.kill_host("w1")
        rc = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    text = log.read_text()
    assert rc == 0, text[-5000:]
    rows = _rows(db)
    assert len(rows) == 4 * 4 and len({r["key"] for r in rows}) == len(rows)
    assert all(r["state"] == "done" and r["result_key"] for r in rows), rows
    assert _result_count(db) == len(rows)  # every job once: no result stored twice
    # after the kill, nothing was measured on w1; its jobs were measured on w2's equivalent devices
    on_w1 = [r for r in rows if r["device_id"].startswith("w1/")]
    assert on_w1 and all(r["finished_utc"] <= killed_at + 1.0 for r in on_w1), (on_w1, killed_at)
    assert sum(r["device_id"].startswith("w2/") for r in rows) > len(rows) // 2
    moved = [r for r in rows if r["fault_class"] == "host_lost"]
    assert moved and all(r["device_id"].startswith("w2/") for r in moved), moved
    for r in moved:  # a phone's job went to w2's phone, a board's to w2's board (same labels)
        kind = "adb" if "/adb:" in r["device_id"] else "tcp"
        assert r["device_id"] == lab.devices["w2"][kind]
    assert "host lost" in text, text[-3000:]
