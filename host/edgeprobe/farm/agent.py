"""``edgeprobe farm agent``: one host's devices offered to a farm on Ray (``farm/executors/ray.py``).

The agent reads the host's device file (the ``[[device]]`` tables of a farm file), checks each
device's health (``farm/health.py``), and starts a Ray worker node joined to the cluster at
``--address`` with one custom resource of capacity 1 per healthy device and the host's facts as node
labels. Ray fixes a node's resources when it starts, so a device that is unhealthy at start is left
out (restart the agent to offer it); a device that fails later is handled by edgeprobe's own faults
and quarantine on the driver, not by Ray. The agent then publishes its inventory (every device, its
labels, its resource and its health) as a small detached actor on its own node, which dies with the
node, and waits. Ctrl-C or SIGTERM stops the node.

What the host needs: edgeprobe and Ray (``pip install 'edgeprobe[ray]'``, the driver's versions) and
the runner bundles of the formats it measures (``edgeprobe runner build`` for the native runner);
not torch, torchvision or executorch's Python package: the driver lowers, the agent only measures.
Device tokens (``token_env``) are read from the agent's own environment and never leave the host.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from edgeprobe.errors import UsageError
from edgeprobe.farm.executors.ray import AGENT_PREFIX, NAMESPACE, connect, device_resource, require_ray
from edgeprobe.farm.executors.ray_actors import AgentInfo

Log = Callable[[str], None]
NODE_START_TIMEOUT_S = 120.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")


class NameTaken(UsageError):
    """Another live node of the cluster runs an agent of this name: not retried."""


def _label_value(text: str) -> str:
    """A Ray label value: letters, digits, ``-_.``, starting and ending with a letter or digit, <= 63."""
    v = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")[:63].strip("-_.")
    return v or "unknown"


def host_labels(name: str) -> dict[str, str]:
    """The host's facts as Ray node labels (what a scheduling rule could select on)."""
    from edgeprobe.versions import __version__

    return {"edgeprobe-agent": name, "edgeprobe-version": _label_value(__version__),
            "edgeprobe-os": _label_value(platform.system().lower()), "edgeprobe-arch": _label_value(platform.machine()),
            "edgeprobe-python": _label_value(platform.python_version())}


def inventory(name: str, entries: Sequence[Any], probe: Callable[[Any], Any]) -> list[dict]:
    """One row per device of the file: its id, labels, resource name, token variable and health now."""
    rows = []
    for e in entries:
        p = probe(e)
        rows.append({"id": e.id, "labels": dict(e.labels), "token_env": e.token_env,
                     "resource": device_resource(name, e.id), "healthy": bool(p.reachable),
                     "health": ("ok" + (f" · {p.description}" if p.description else "")) if p.reachable
                     else f"unreachable: {p.error}"})
    return rows


def ray_start_argv(address: str, resources: dict[str, float], labels: dict[str, str], *, num_cpus: int,
                   node_ip: Optional[str], object_store_mb: Optional[int], temp_dir: Optional[str] = None) -> list[str]:
    """``ray start`` joining ``address`` as a worker node, in the foreground (``--block``: the node's
    processes stop when it does)."""
    ray_cli = Path(sys.executable).with_name("ray")
    argv = [str(ray_cli) if ray_cli.exists() else "ray", "start", "--address", address, "--block",
            "--num-cpus", str(num_cpus), "--num-gpus", "0", "--resources", json.dumps(resources),
            "--labels", ",".join(f"{k}={v}" for k, v in labels.items()), "--disable-usage-stats"]
    if node_ip:
        argv += ["--node-ip-address", node_ip]
    if object_store_mb:
        argv += ["--object-store-memory", str(object_store_mb * 1024 * 1024)]
    if temp_dir:
        argv += ["--temp-dir", temp_dir]
    return argv


def _publish(ray: Any, name: str, rows: list[dict], facts: dict, resources: dict[str, float]) -> None:
    """The inventory actor, pinned to this agent's node (found by its resources: the agent's driver
    connection may attach to any node of this host)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    mine = set(resources)
    node_id = None
    for node in ray.nodes():
        if node.get("Alive") and (not mine or mine <= set(node.get("Resources") or {})) \
                and (node.get("Labels") or {}).get("edgeprobe-agent") == name:
            node_id = node["NodeID"]
    if node_id is None:
        raise UsageError(f"agent {name}: its Ray node did not appear in the cluster")
    actor_name = AGENT_PREFIX + name
    try:
        old = ray.get_actor(actor_name, namespace=NAMESPACE)
    except ValueError:  # no agent of this name (or its node is gone)
        old = None
    if old is not None:
        try:
            held_by = ray.get(old.inventory.remote(), timeout=10.0)["facts"].get("node_id")
        except Exception:  # noqa: BLE001 - a stuck or dying inventory is replaced
            held_by = None
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        if held_by and held_by != node_id and held_by in alive:
            raise NameTaken(f"agent name {name!r} is taken by another live node of the cluster; give this host "
                             "its own --name (device ids are NAME/DEVICE)")
        ray.kill(old, no_restart=True)  # this agent restarted: its old inventory goes
    facts = {**facts, "node_id": node_id}
    info = ray.remote(AgentInfo).options(
        name=actor_name, namespace=NAMESPACE, lifetime="detached", num_cpus=0, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)).remote(name, rows, facts)
    ray.get(info.inventory.remote(), timeout=NODE_START_TIMEOUT_S)


def run_agent(address: str, devices_file: str, *, name: Optional[str] = None, node_ip: Optional[str] = None,
              num_cpus: int = 1, object_store_mb: Optional[int] = None, temp_dir: Optional[str] = None,
              log: Log = print,
              probe: Optional[Callable[[Any], Any]] = None) -> int:
    """Start this host's Ray node with its devices and wait until it stops; the node's exit code."""
    from edgeprobe.farm.health import probe as health_probe
    from edgeprobe.farm.inventory import load_devices

    ray = require_ray()
    name = name or socket.gethostname().split(".")[0]
    if not _NAME.match(name):
        raise UsageError(f"agent name {name!r}: letters, digits and -_. only, at most 63 characters (--name)")
    if num_cpus < 0:
        raise UsageError(f"--num-cpus must be >= 0, got {num_cpus}")
    entries = load_devices(devices_file)
    rows = inventory(name, entries, probe or health_probe)
    for r in rows:
        log(f"{name}/{r['id']}: {r['health']}" + ("" if r["healthy"] else " — not offered"))
    resources = {r["resource"]: 1.0 for r in rows if r["healthy"]}
    argv = ray_start_argv(address, resources, host_labels(name), num_cpus=num_cpus, node_ip=node_ip,
                          object_store_mb=object_store_mb, temp_dir=temp_dir)
    # Ray drains a node for 30 s on SIGTERM (for services behind it); a device host has nothing to drain
    env = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "1", "RAY_USAGE_STATS_ENABLED": "0", **os.environ}
    # its own process group: the node's raylet and helpers are in it, so a stop that times out kills them all
    node = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, env=env)

    def stop(*_a: Any) -> None:
        if node.poll() is None:
            node.terminate()

    old = {s: signal.signal(s, lambda *_a: (stop(), sys.exit(130 if _a[0] == signal.SIGINT else 143)))
           for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while True:
            if node.poll() is not None:
                raise UsageError(f"agent {name}: `ray start` exited with {node.returncode} "
                                 f"(is the head at {address} reachable from here?)")
            try:
                connect(address, node_ip=node_ip)
                _publish(ray, name, rows, {"hostname": socket.gethostname(), "pid": os.getpid(), **host_labels(name)},
                         resources)
                break
            except NameTaken:
                raise
            except UsageError:  # its node is not listed yet
                if time.monotonic() >= deadline:
                    raise
            except Exception as exc:  # noqa: BLE001 - the node is still starting: ConnectionError, RuntimeError
                if time.monotonic() >= deadline:
                    raise UsageError(f"agent {name}: could not publish its devices within "
                                     f"{NODE_START_TIMEOUT_S:.0f} s: {' '.join(str(exc).split())[:300]}") from None
            if ray.is_initialized():
                ray.shutdown()
            time.sleep(1.0)
        ray.shutdown()  # the node stays up; the inventory actor is detached
        log(f"agent {name}: {len(resources)} of {len(rows)} device(s) offered to the cluster at {address}; "
            "Ctrl-C stops this host's node")
        return node.wait()
    finally:
        stop()
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        for s, h in old.items():
            signal.signal(s, h)
