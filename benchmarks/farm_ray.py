"""A farm on Ray (issue 17): what Ray costs per job, and how long a dead host takes to notice.

Both run on a real cluster on this machine (tests/ray_cluster.py: the head in one network
namespace, worker hosts in others, a bridge between them; needs root and iproute2). The driver runs
in the head's namespace, as ``farm run --ray`` would on a lab's head host.

1. **Per-job overhead, Ray vs the local executor** (``--only overhead``). One worker host offers
   ``--devices`` device resources. The same mock-transport jobs (``tiny_cnn``/fp32 lowered once,
   ``--jobs`` launches over the devices, SQLite journal in a temp dir) run through ``run_farm``:
   *local*, each device's session a MeasureSession on a MockTransport in the driver; *ray*, each
   device's session a RemoteSession, every measurement a call to that device's actor on the worker
   host, which runs the same MockTransport session there (the artifact shipped through the object
   store once). Interleaved (local, ray, ray, local, ...), ``--repeats`` each; per job:
   (farm wall - lowering) / jobs, medians; the difference is what Ray adds to a job.
2. **Noticing a dead host** (``--only detect``). Two worker hosts, each with one mock device of the
   same labels; a farm whose every mock measurement takes ``--job-s`` seconds. Once w1's device is
   measuring, everything in w1's namespace is SIGKILLed (``kill_host``). Timed from the kill: until
   the driver's ``ray.get`` on the running call raises (the actor's death reported), and until the
   job is moved to w2's device (the farm's log line), for the head's health-check settings of the
   tests (``ray_cluster.FAST_HEALTH_CHECK``) and for Ray's defaults. ``--repeats`` kills each.
   ``--cut``: w1's link is taken down first (a pulled cable: nothing closes its connections).

    sudo .venv/bin/python benchmarks/farm_ray.py [--only overhead|detect] [--jobs 200] [--devices 2]
                                                 [--repeats 3] [--job-s 3] [--cut]

Prints Markdown tables (paste into docs/benchmarks.md with the command line).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


# ---- the driver: runs inside the head's namespace ---------------------------------------------------


def _mock_session(device_id: str, job_s: float = 0.0) -> Any:
    from edgeprobe.devices import Device
    from edgeprobe.devices.mock import MockTransport, ok_record
    from edgeprobe.session import MeasureSession

    def answer(run: Any) -> Any:
        if job_s:
            time.sleep(job_s)
        run.write_record(ok_record((1.0, 1.0, 1.0)))
        return run.ok()

    return MeasureSession(Device(device_id, MockTransport(answer), "python"))


def _actor_class(job_s: float) -> type:
    """A DeviceActor that measures on a MockTransport session of its own (on the worker host)."""
    from edgeprobe.farm.executors.ray_actors import DeviceActor

    class MockDeviceActor(DeviceActor):
        def measure(self, cache_key: str, boxed_ref: Any, config: Any) -> str:
            art = self.artifact(cache_key, boxed_ref)
            if "mock" not in self.sessions:
                self.sessions["mock"] = _mock_session(self.local_id, job_s)
            return self.sessions["mock"].measure(art, config).to_json(indent=None)

    return MockDeviceActor


def _farm(device_ids: list[str], hosts: list[str], launches: int) -> Any:
    import dataclasses

    from edgeprobe.farm.inventory import DeviceEntry, parse_farm

    farm = parse_farm(f'[matrix]\nmodels = ["tiny_cnn"]\nrecipes = ["fp32"]\nlaunches = {launches}\n'
                      'iterations = 3\nwarmup = 0\n', "<ray bench>", devices_listed=False)
    return dataclasses.replace(farm, devices=tuple(DeviceEntry(d, {"tier": "mock"}, None, 0, "bench", host=h)
                                                   for d, h in zip(device_ids, hosts)))


def _cluster_devices(resources: dict[str, str]) -> list:
    from edgeprobe.farm.executors.ray import ClusterDevice

    return [ClusterDevice(f"{host}/mock{i}", host, f"mock{i}", {"tier": "mock"}, res, None, True, "ok")
            for i, (res, host) in enumerate(resources.items())]


def driver_overhead(address: str, resources: dict[str, str], jobs: int, repeats: int) -> dict:
    from edgeprobe.farm import scheduler
    from edgeprobe.farm.db.engine import open_db
    from edgeprobe.farm.executors import ray as on_ray

    on_ray.connect(address)
    devices = _cluster_devices(resources)
    n = len(devices)
    farm = _farm([d.id for d in devices], [d.host for d in devices], jobs // n)
    box: dict = {}
    orig = scheduler._lower_groups

    def timed(*a: Any, **kw: Any) -> Any:
        t0 = time.monotonic()
        try:
            return orig(*a, **kw)
        finally:
            box["lowering_s"] = time.monotonic() - t0

    scheduler._lower_groups = timed
    per: dict[str, list[float]] = {"local": [], "ray": []}
    order = ["local", "ray", "ray", "local"] * ((repeats + 1) // 2)
    for i, kind in enumerate(order[: 2 * repeats]):
        rd = on_ray.RayDevices(devices, actor_class=_actor_class(0.0)) if kind == "ray" else None
        opener = rd if rd is not None else (lambda entry, _fmt: _mock_session(entry.id))
        with tempfile.TemporaryDirectory(prefix="ep-bench-ray-") as tmp:
            db = open_db(f"sqlite:///{Path(tmp) / 'farm.sqlite'}")
            t0 = time.monotonic()
            summary = scheduler.run_farm(farm, db=db, run_id=f"{kind}-{i}", opener=opener)
            wall = time.monotonic() - t0
            db.close()
        if rd is not None:
            rd.shutdown()
        if summary.counts.get("done") != n * (jobs // n):
            raise RuntimeError(f"{kind}: {summary.counts}")
        per[kind].append((wall - box["lowering_s"]) / (n * (jobs // n)) * 1e3)
    return {"per_job_ms": per, "jobs": n * (jobs // n), "devices": n}


def driver_detect(address: str, resources: dict[str, str], job_s: float, mark: str) -> None:
    """A farm over one mock device per host; prints each log line with its epoch time (the orchestrator
    kills w1 once it has seen w1's device start measuring)."""
    from edgeprobe.farm.db.engine import open_db
    from edgeprobe.farm.executors import ray as on_ray
    from edgeprobe.farm.scheduler import run_farm

    on_ray.connect(address)
    devices = _cluster_devices(resources)
    farm = _farm([d.id for d in devices], [d.host for d in devices], 3)

    def log(m: str) -> None:
        print(json.dumps({"t": time.time(), "m": m}), flush=True)

    class Timed(on_ray.RayDevices):
        def __call__(self, entry: Any, format: str) -> Any:
            session = super().__call__(entry, format)
            measure = session.measure

            def timed_measure(artifact: Any, config: Any) -> Any:
                log(f"{entry.id}: measuring")
                try:
                    return measure(artifact, config)
                except Exception as exc:
                    log(f"{entry.id}: raised {type(exc).__name__}")
                    raise

            session.measure = timed_measure  # type: ignore[method-assign]
            return session

    rd = Timed(devices, actor_class=_actor_class(job_s), log=log)
    with tempfile.TemporaryDirectory(prefix="ep-bench-ray-") as tmp:
        db = open_db(f"sqlite:///{Path(tmp) / 'farm.sqlite'}")
        summary = run_farm(farm, db=db, run_id=f"detect-{mark}", opener=rd, log=log)
        db.close()
    rd.shutdown()
    log(f"summary {json.dumps(summary.counts)}")


# ---- the orchestrator: builds the cluster, runs the driver in the head's namespace --------------------


def _driver(c: Any, mode: str, *args: str, timeout: float = 900) -> subprocess.Popen:
    return c.popen("head", [sys.executable, __file__, "--driver", mode, c.address, *args],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_overhead(jobs: int, n_devices: int, repeats: int) -> dict:
    from edgeprobe.farm.executors.ray import device_resource
    from ray_cluster import ray_cluster

    resources = {device_resource("w1", f"mock{i}"): "w1" for i in range(n_devices)}
    with ray_cluster(workers={"w1": {"num_cpus": 0, "resources": {r: 1 for r in resources}}}, prefix="rb") as c:
        p = _driver(c, "overhead", json.dumps(resources), str(jobs), str(repeats))
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"driver failed ({p.returncode}):\n{err[-4000:]}")
        return json.loads(out.strip().splitlines()[-1])


def run_detect(job_s: float, repeats: int, fast: bool, cut: bool = False) -> list[dict]:
    from edgeprobe.farm.executors.ray import device_resource
    from ray_cluster import ray_cluster

    out: list[dict] = []
    for k in range(repeats):
        resources = {device_resource("w1", "mock0"): "w1", device_resource("w2", "mock1"): "w2"}
        workers = {h: {"num_cpus": 0, "resources": {r: 1}} for r, h in resources.items()}
        with ray_cluster(workers=workers, system_config=None if fast else {}, prefix="rd") as c:
            p = _driver(c, "detect", json.dumps(resources), str(job_s), f"{k}")
            killed = moved = raised = None
            lines: list[dict] = []
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                line = p.stdout.readline()
                if not line:
                    break
                try:  # Ray's own messages (a node marked dead) share the driver's stdout
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(ev, dict) or "m" not in ev:
                    continue
                lines.append(ev)
                if killed is None and ev["m"] == "w1/mock0: measuring":
                    time.sleep(job_s / 3)  # mid-job
                    killed = time.time()
                    c.kill_host("w1", cut_link=cut)
                elif killed and raised is None and ev["m"].startswith("w1/mock0: raised"):
                    raised = ev["t"] - killed
                elif killed and moved is None and "w1/mock0" in ev["m"] and "moved to w2/mock1" in ev["m"]:
                    moved = ev["t"] - killed
            p.wait(timeout=120)
            summary = next((e["m"] for e in reversed(lines) if e["m"].startswith("summary")), "no summary")
            out.append({"fast": fast, "cut": cut, "raised_s": raised, "moved_s": moved, "summary": summary})
            print(f"  kill {k + 1}/{repeats} ({'test' if fast else 'Ray default'} health checks): "
                  f"raised after {raised} s, moved after {moved} s; {summary}", file=sys.stderr)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        mode, address, resources = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        if mode == "overhead":
            print(json.dumps(driver_overhead(address, resources, int(sys.argv[5]), int(sys.argv[6]))))
        else:
            driver_detect(address, resources, float(sys.argv[5]), sys.argv[6])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["overhead", "detect"])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--job-s", type=float, default=3.0)
    ap.add_argument("--cut", action="store_true", help="detect: take w1's link down before the kill (a pulled "
                                                       "cable: no connection is closed, the peers hear nothing)")
    args = ap.parse_args()
    from ray_cluster import ray_available

    ok, why = ray_available()
    if not ok:
        raise SystemExit(f"needs a Ray cluster in network namespaces: {why}")
    if args.only in (None, "overhead"):
        r = run_overhead(args.jobs, args.devices, args.repeats)
        local, ray_ = statistics.median(r["per_job_ms"]["local"]), statistics.median(r["per_job_ms"]["ray"])
        print(f"\n### Per-job overhead through Ray ({r['jobs']} mock jobs on {r['devices']} devices, "
              f"{args.repeats} runs each, interleaved)\n")
        print("| executor | wall per job, median (ms) | runs (ms) |\n|---|---|---|")
        print(f"| local threads | {local:.2f} | {', '.join(f'{x:.2f}' for x in r['per_job_ms']['local'])} |")
        print(f"| Ray actors on another host | {ray_:.2f} | {', '.join(f'{x:.2f}' for x in r['per_job_ms']['ray'])} |")
        print(f"\nRay adds {ray_ - local:.2f} ms per job ({ray_ / local:.2f}x the local executor's wall per job).")
    if args.only in (None, "detect"):
        rows = (run_detect(args.job_s, args.repeats, fast=True, cut=args.cut)
                + run_detect(args.job_s, args.repeats, fast=False, cut=args.cut))
        how = "link cut, then SIGKILL" if args.cut else "SIGKILL"
        print(f"\n### Noticing a dead host ({how}; {args.repeats} kills each, a {args.job_s:g} s mock job running)\n")
        print("| head health checks | kill → ray.get raises (s) | kill → job moved (s) |\n|---|---|---|")
        for fast in (True, False):
            sel = [r for r in rows if r["fast"] == fast]
            name = "tests' (500 ms period, 3 misses)" if fast else "Ray's defaults"
            fmt = lambda key: ", ".join("—" if r[key] is None else f"{r[key]:.1f}" for r in sel)  # noqa: E731
            print(f"| {name} | {fmt('raised_s')} | {fmt('moved_s')} |")


if __name__ == "__main__":
    main()
