"""A farm over several hosts on Ray: the driver's side (``edgeprobe farm run FARM.toml --ray ADDRESS``).

What runs where:

- **Agents** (``farm/agent.py``, one per host with devices; what runs there is ``ray_actors.py``)
  join the cluster as worker nodes, offer each healthy device as a custom resource of capacity 1 (:func:`device_resource`) and publish their
  inventory in a small detached actor (``agent:NAME`` in the ``edgeprobe`` namespace).
- **The driver** reads those inventories (:func:`read_inventories`), lowers every artifact once, and
  runs the farm's usual workers (``farm/worker.py``: leases, claims, faults, quarantine) as threads of
  its own process, because the database is the journal and only the driver writes it (agents write
  nothing durable; Ray is not durable storage). A worker's "session" is a :class:`RemoteSession`: each
  measurement is a call to that device's long-lived :class:`DeviceActor` (``num_cpus=0``, the device's
  resource, so Ray places it on the host that has the device), which holds the device's measurement
  sessions. Artifacts go to the agents through Ray's object store, once per artifact.
- **Faults.** A call that fails because the actor or its node died, or a device no live node offers,
  raises :class:`~edgeprobe.errors.HostLostError` (fault class ``host_lost``: the job moves to an
  equivalent device on another host). Ray waits forever for a resource nobody offers, so every
  placement is checked against the live nodes first and every wait has a timeout. A job that ran but
  whose reply was lost is measured again elsewhere and stored once: results are keyed by the job.

Ray is an optional extra (``pip install 'edgeprobe[ray]'``); nothing else in edgeprobe imports it.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from edgeprobe.errors import HostLostError, TransportError, UsageError
from edgeprobe.farm.executors.ray_actors import DeviceActor, pack_artifact

NAMESPACE = "edgeprobe"
AGENT_PREFIX = "agent:"
ACTOR_START_TIMEOUT_S = 60.0  # a device's actor: placed, its process started, its device not yet opened
INVENTORY_TIMEOUT_S = 10.0  # an agent's inventory call
REPLY_GRACE_S = 60.0  # a measurement's reply beyond its own timeout (open, push, hygiene waits)
UNAVAILABLE_WAIT_S = 90.0  # after ActorUnavailableError: until Ray declares the node dead or the actor answers
INSTALL_HINT = "pip install 'edgeprobe[ray]'  (Ray on the driver and on every agent host, the same version)"

Log = Callable[[str], None]


def require_ray() -> Any:
    """``import ray``, or a UsageError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


def device_resource(host: str, device_id: str) -> str:
    """The custom resource that stands for one device of one host: a name Ray accepts (letters,
    digits, underscores), readable, and unique per (host, device) through a hash of both."""
    digest = hashlib.sha256(f"{host}\0{device_id}".encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9]+", "_", f"{host}_{device_id}").strip("_")[:40]
    return f"edgeprobe_device_{readable}_{digest}"


def qualified_id(host: str, device_id: str) -> str:
    """A device's id in a Ray farm: ``HOST/ID`` (two hosts may both have ``local`` or the same adb serial)."""
    return f"{host}/{device_id}"


# ---- the driver's side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterDevice:
    """A device an agent offers: its farm id (``HOST/ID``), the agent's own id for it, its labels,
    the custom resource that stands for it, and its health when the agent started."""

    id: str
    host: str
    local_id: str
    labels: Mapping[str, str] = field(hash=False)
    resource: str
    token_env: Optional[str]
    healthy: bool
    health: str


def connect(address: str, log: Log = lambda _m: None, *, node_ip: Optional[str] = None) -> Any:
    """``ray.init`` on the cluster at ``address`` (this host must be one of its nodes, e.g. the head;
    ``node_ip``: which of this host's nodes, where several share one machine)."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING",
                     **({"_node_ip_address": node_ip} if node_ip else {}))
        except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError by version
            raise UsageError(f"cannot join the Ray cluster at {address}: {' '.join(str(exc).split())[:300]} "
                             "(start it with `ray start --head` on this host and `edgeprobe farm agent` on each "
                             "host with devices: docs/farm.md)") from None
    return ray


def alive_resources() -> dict[str, float]:
    """Every custom resource of the cluster's live nodes (summed)."""
    import ray

    total: dict[str, float] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for name, amount in (node.get("Resources") or {}).items():
                total[name] = total.get(name, 0.0) + float(amount)
    return total


def node_alive(node_id: str) -> bool:
    """Whether the GCS lists the node ``node_id`` as alive."""
    import ray

    return any(n.get("NodeID") == node_id and n.get("Alive") for n in ray.nodes())


def read_inventories(log: Log = lambda _m: None) -> list[ClusterDevice]:
    """The devices every live agent offers now (an agent that does not answer is skipped, said)."""
    import ray

    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a.get("namespace") == NAMESPACE and a["name"].startswith(AGENT_PREFIX))
    offered = alive_resources()
    out: list[ClusterDevice] = []
    for name in names:
        try:
            inv = ray.get(ray.get_actor(name, namespace=NAMESPACE).inventory.remote(), timeout=INVENTORY_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a dead or stuck agent is not part of this run
            log(f"{name}: no inventory ({type(exc).__name__}); its devices are not used")
            continue
        for d in inv["devices"]:
            healthy = bool(d["healthy"]) and d["resource"] in offered
            out.append(ClusterDevice(qualified_id(inv["name"], d["id"]), inv["name"], d["id"], dict(d["labels"]),
                                     d["resource"], d.get("token_env"), healthy, d["health"]))
    return out


def cluster_farm(farm: Any, *, wait_s: float, log: Log = lambda _m: None,
                 poll_s: float = 1.0) -> tuple[Any, list[ClusterDevice]]:
    """``(farm, offered)``: ``farm`` with its devices taken from the cluster's agents (the healthy
    devices they offer, with their labels), and those devices. Waits up to ``wait_s`` for the
    matrix's device selectors to be met (agents may still be joining), then a UsageError naming what
    is offered."""
    import dataclasses

    from edgeprobe.farm.inventory import DeviceEntry, select

    if farm.devices or farm.discover:
        what = "the [[device]] tables" if farm.devices else "discover = true"
        raise UsageError(f"{farm.path}: a farm on Ray takes its devices from the agents (`edgeprobe farm agent "
                         f"--devices HOST.toml` on each host); remove {what} or run without --ray")
    deadline = time.monotonic() + wait_s
    while True:
        found = read_inventories(log)
        entries = tuple(DeviceEntry(d.id, dict(d.labels), None, 0, f"ray agent {d.host}", host=d.host)
                        for d in found if d.healthy)
        candidate = dataclasses.replace(farm, devices=entries)
        try:
            select(candidate)
            break
        except UsageError as exc:
            if time.monotonic() >= deadline:
                unhealthy = "; ".join(f"{d.id}: {d.health}" for d in found if not d.healthy)
                raise UsageError(f"{exc} — after waiting {wait_s:.0f} s for the cluster's agents"
                                 + (f"; not offered (unhealthy): {unhealthy}" if unhealthy else "")) from None
            time.sleep(poll_s)
    for d in found:
        log(f"{d.id}: {'offered' if d.healthy else 'not offered'} by agent {d.host} ({d.health})")
    return candidate, [d for d in found if d.healthy]


class RayDevices:
    """The farm's ``Opener`` on Ray: one long-lived :class:`DeviceActor` per device, created on first
    use where the device's resource is, and the artifacts put in the object store once each."""

    def __init__(self, devices: Sequence[ClusterDevice], *, start_timeout_s: float = ACTOR_START_TIMEOUT_S,
                 reply_grace_s: float = REPLY_GRACE_S, unavailable_wait_s: float = UNAVAILABLE_WAIT_S,
                 log: Log = lambda _m: None, actor_class: type = DeviceActor) -> None:
        """``actor_class``: DeviceActor, or (benchmarks) a subclass that measures on a mock transport."""
        import ray

        self._ray = ray
        self._remote_actor = ray.remote(actor_class)
        self.devices = {d.id: d for d in devices}
        self.start_timeout_s, self.reply_grace_s, self.log = start_timeout_s, reply_grace_s, log
        self.unavailable_wait_s = unavailable_wait_s
        self._actors: dict[str, Any] = {}
        self._refs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.facts: dict[str, dict] = {}  # device id -> what its actor said about itself when it started

    def __call__(self, entry: Any, format: str) -> "RemoteSession":
        self.actor(entry.id)  # fails now (host_lost) rather than at the first measurement
        return RemoteSession(self, entry.id, format)

    def actor(self, device_id: str) -> Any:
        with self._lock:
            if device_id in self._actors:
                return self._actors[device_id]
        d = self.devices.get(device_id)
        if d is None:
            raise HostLostError(f"{device_id}: no agent of the cluster offers it")
        if alive_resources().get(d.resource, 0.0) < 1.0:
            raise HostLostError(f"{device_id}: no live Ray node offers it (resource {d.resource}; "
                                f"agent {d.host} is gone or left it out)")
        actor = self._remote_actor.options(num_cpus=0, resources={d.resource: 1}, max_restarts=0,
                                           max_task_retries=0, name=None).remote(d.local_id, d.token_env)
        try:
            facts = self._ray.get(actor.ready.remote(), timeout=self.start_timeout_s)
        except Exception as exc:  # noqa: BLE001 - GetTimeoutError (unplaceable, stuck start) or the actor died
            self._ray.kill(actor, no_restart=True)
            raise HostLostError(f"{device_id}: its actor did not start on agent {d.host} within "
                                f"{self.start_timeout_s:.0f} s ({type(exc).__name__})") from None
        from edgeprobe.versions import __version__

        if facts.get("edgeprobe") != __version__:
            self._ray.kill(actor, no_restart=True)
            raise UsageError(f"agent {d.host} runs edgeprobe {facts.get('edgeprobe')}, this driver {__version__}: "
                             "install the same version on every host")
        with self._lock:
            self._actors[device_id] = actor
            self.facts[device_id] = facts
        self.log(f"{device_id}: actor started on {facts.get('hostname')} ({facts.get('node_ip')}, "
                 f"node {str(facts.get('node_id'))[:12]})")
        return actor

    def artifact_ref(self, artifact: Any) -> Any:
        key = artifact.manifest.cache_key
        with self._lock:
            if key not in self._refs:
                self._refs[key] = self._ray.put(pack_artifact(artifact))
            return self._refs[key]

    def forget(self, device_id: str) -> None:
        """Drop (and kill) a device's actor: the next use starts a new one, if its node is alive."""
        with self._lock:
            actor = self._actors.pop(device_id, None)
        if actor is not None:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass

    def shutdown(self) -> None:
        for device_id in list(self._actors):
            self.forget(device_id)
        self._refs.clear()


@dataclass
class RemoteSession:
    """What a farm worker measures through: the ``measure``/``close`` of a MeasureSession, done by
    the device's actor. Ray's failures become edgeprobe's: a dead actor or node ``HostLostError``, an
    exception raised on the agent itself (a TransportError, a DeviceNotReadyError) as it was raised."""

    devices: RayDevices
    device_id: str
    format: str

    def measure(self, artifact: Any, config: Any) -> Any:
        from ray import exceptions as rex

        from edgeprobe.results import BenchResult

        ray = self.devices._ray
        actor = self.devices.actor(self.device_id)
        ref = actor.measure.remote(artifact.manifest.cache_key, [self.devices.artifact_ref(artifact)], config)
        wait_s = config.timeout_s + self.devices.reply_grace_s
        try:
            text = ray.get(ref, timeout=wait_s)
        except rex.GetTimeoutError:
            self.devices.forget(self.device_id)
            raise TransportError(f"{self.device_id}: no reply from its actor within {wait_s:.0f} s; "
                                 "the actor was restarted") from None
        except rex.RayTaskError as exc:  # raised on the agent: re-raised as the agent raised it
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except rex.ActorUnavailableError as exc:  # (a RayActorError) Ray has not decided yet: wait until it does
            raise self._when_decided(actor, exc) from None
        except (rex.RayActorError, rex.NodeDiedError, rex.ObjectLostError, rex.WorkerCrashedError) as exc:
            self.devices.forget(self.device_id)
            why = " ".join(str(exc).split())[:400]
            raise HostLostError(f"{self.device_id}: lost its host mid-job ({type(exc).__name__}: {why})") from None
        return BenchResult.from_json(text)

    def _when_decided(self, actor: Any, first: BaseException) -> Exception:
        """After Ray's ActorUnavailableError (the connection to the actor broke; the call "may or may
        not have been executed"), wait until either the node is declared dead (HostLostError: the job
        moves to another host) or the actor answers again (TransportError: a device_lost fault, the job
        retried here); neither within ``unavailable_wait_s``: the host is treated as lost."""
        from ray import exceptions as rex

        ray, d = self.devices._ray, self.devices
        node_id = d.facts.get(self.device_id, {}).get("node_id")
        deadline = time.monotonic() + d.unavailable_wait_s
        while time.monotonic() < deadline:
            if node_id and not node_alive(node_id):
                d.forget(self.device_id)
                return HostLostError(f"{self.device_id}: lost its host mid-job (its Ray node was declared dead)")
            try:
                ray.get(actor.ready.remote(), timeout=2.0)
                return TransportError(f"{self.device_id}: the connection to its actor broke mid-job (the job may or "
                                      "may not have run; it is measured again and stored once)")
            except (rex.GetTimeoutError, rex.ActorUnavailableError):
                time.sleep(0.5)
            except rex.RayActorError as exc:
                d.forget(self.device_id)
                return HostLostError(f"{self.device_id}: lost its host mid-job ({type(exc).__name__})")
        d.forget(self.device_id)
        return HostLostError(f"{self.device_id}: no answer from its host for {d.unavailable_wait_s:.0f} s after "
                             f"{type(first).__name__}")

    def close(self) -> None:
        actor = self.devices._actors.get(self.device_id)
        if actor is None:
            return
        try:
            self.devices._ray.get(actor.close.remote(self.format), timeout=INVENTORY_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a host that is gone has nothing to close
            pass
