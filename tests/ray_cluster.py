"""A real multi-host Ray cluster on one machine: one network namespace per "host", joined by a bridge
that lives in a namespace of its own, so all cluster traffic stays inside namespaces made here.

Needs root, iproute2 and an importable ``ray``. Tests call :func:`ray_available` and skip with its
reason when it says no::

    ok, why = ray_available()
    if not ok:
        pytest.skip(why)
    with ray_cluster(workers={"w1": {"resources": {"dev_a": 1}, "labels": {"role": "a"}},
                              "w2": {"num_cpus": 0, "resources": {"dev_b": 1}}}) as c:
        p = c.python("head", DRIVER_CODE, timeout=120)     # a driver in the head namespace (RAY_ADDRESS set)
        c.kill_host("w1")                                 # SIGKILL everything in w1's namespace
        c.wait_nodes(alive=2, dead=1, timeout_s=30)

Layout: namespace ``<base>-br`` holds a Linux bridge ``br0``; each host namespace ``<base>-<host>``
has ``eth0`` (a veth whose peer is a port of ``br0``) with ``<subnet>.<n>/24`` on a random
10.x.y.0/24, and ``lo`` up. ``<base>`` is ``<prefix>-<pid>-<hex>`` as in ``netns.py``.

Each Ray node is ``ray start ... --block`` run by ``ip netns exec`` in its host namespace, with its
own ``--temp-dir`` (``<root>/<host>``, ``<root>`` a fresh ``/tmp/rayc-XXXX`` removed on exit): nodes
share the filesystem, so per-node temp dirs keep their session dirs, unix sockets and logs apart
(``ray start --temp-dir`` is accepted per node in Ray 2.60: the node's temp dir is stored in its
GcsNodeInfo, and a driver started on that node's IP finds it there). Ports need no ranges: each
namespace has its own port space, so Ray's defaults (GCS 6379, random node/object manager ports,
worker ports 10002-19999) cannot clash. ``--object-store-memory`` is 100 MB (Ray's minimum is 75 MB)
and ``RAY_USAGE_STATS_ENABLED=0`` / ``--disable-usage-stats`` keep it offline.

Fast failure detection: the head gets ``--system-config`` with the GCS health-check keys (names
checked in the gcs_server binary of Ray 2.60: ``RAY_health_check_*``) -- see :data:`FAST_HEALTH_CHECK`.
Measured: 1.1 s (plain kill) / 2.6-3.0 s (silent, ``cut_link``) with it, against 13.6 s / 63.6 s with
Ray's defaults (consistent with period 3 s, timeout 10 s, threshold 5). The price: a raylet that cannot
answer for ~1.5 s (a starved CPU) is declared dead for good; pass ``system_config`` to loosen it.

Drivers: :meth:`RayCluster.python` runs a script in a host namespace with ``RAY_ADDRESS`` set, so
``ray.init()`` connects. In any namespace but the head's, a driver must ALSO pass
``ray.init(_node_ip_address=os.environ["RAYC_NODE_IP"])`` (:data:`NODE_IP_ENV`): Ray 2.60 finds "its"
raylet by scanning the process table (``ps`` for ``raylet --node_id``), which every namespace shares,
and prefers the head's -- without the IP a driver in w1 attaches to the HEAD's raylet (works, no
error, but ``get_runtime_context().get_node_id()`` is the head's and an actor pinned to "my node"
lands on the head and survives ``kill_host("w1")``).

Measured on this machine (2 shared cores, Ray 2.60.0, under ``nice -n 10``) by one-off experiment
scripts that are not kept; ``benchmarks/farm_ray.py --only detect`` measures the kill-to-requeue time
of a farm (docs/benchmarks.md):

* nothing -> head + 2 workers all alive (namespaces, 3 ``ray start``, the check): 7.6-11.2 s (5 runs);
  one more worker later (``start_worker``, alive in the GCS): 2.9-5.2 s; teardown < 1 s.
  A driver (``python -c "import ray; ray.init()"``): ~1.5 s, of which ``ray.init`` 0.3-0.9 s;
  ``wait_nodes`` when already true: 1.2-1.6 s.
* ``kill_host`` (SIGKILL of all in the namespace) itself: ~0.07 s per host.
  Until the head lists the node dead (``ray.nodes()[i]["Alive"] is False``):
    - FAST_HEALTH_CHECK, plain kill (the kernel closes the sockets: RST/FIN reach the GCS): 1.1 s;
    - FAST_HEALTH_CHECK, ``cut_link=True`` (bridge port down first: power loss, silence): 2.6-3.0 s;
    - Ray defaults (``system_config={}``), plain kill: 13.6 s; ``cut_link=True``: 63.6 s.
* A driver in the head namespace with an actor on the killed host (max_restarts=0):
    - a call running at the kill, ``ray.get(ref, timeout=90)``: ``ray.exceptions.ActorDiedError``
      ("The actor died because its node has died ... health check failed due to missing too many
      heartbeats") when the head declares the node dead -- EXCEPT with a plain kill and Ray's slow
      default health checks: then ``ray.exceptions.ActorUnavailableError`` ("temporarily unavailable:
      RpcError ... Socket closed ... may or may not have been executed") comes first, as soon as the
      connection drops: 1.1 s after the kill for the running call, and each new call fails so after
      ~2 s (connect refused) until the node is declared dead at 13.6 s (both are ``RayActorError``
      subclasses: catch that). With ``cut_link=True`` nothing arrives before the node is declared
      dead (63 s with defaults!): the get just blocks.
    - a new call after that: ``ActorDiedError`` at once. ``NodeDiedError`` was never raised.
* Env: a Ray worker process (task or actor) on a node inherits the environment of that node's
  ``ray start`` (``start_worker(env={"EDGEPROBE_TOKEN": ...})`` -> ``os.environ`` in its tasks); other
  nodes' workers do not see it.
* ``A.options(num_cpus=0, resources={"no_such_resource": 1}).remote()`` is accepted and then pending
  forever: ``ray.get(a.m.remote(), timeout=5)`` raises ``ray.exceptions.GetTimeoutError`` after 5 s
  (the autoscaler prints "No available node types can fulfill resource request"). To tell at once:
  ``[n for n in ray.nodes() if n["Alive"] and n["Resources"].get(r, 0) >= need]`` is empty (~2 ms).
  ``ray.nodes()`` entries hold "NodeID", "Alive", "NodeManagerAddress" (the ``--node-ip-address``),
  "Resources" (custom ones plus CPU/memory/object_store_memory/``node:<ip>``) and "Labels"
  (``--labels`` plus ``ray.io/node-id``).
* Detached named actor (``lifetime="detached", namespace="edgeprobe", num_cpus=0``, pinned with
  ``NodeAffinitySchedulingStrategy(own node id, soft=False)`` by an agent driver in that host's
  namespace, with ``_node_ip_address``!): once the head declares the host dead, ``ray.get_actor``
  raises ``ValueError("Failed to look up actor with name ...")``, ``ray.util.list_named_actors(
  all_namespaces=True)`` no longer lists it, and a call through an old handle raises
  ``ActorDiedError``. Before that, both still show it. The state API (``ray.util.state``) needs the
  dashboard, which is off here (``ServerUnavailable``).
* Zombies: processes SIGKILLed in a namespace whose parent died too are reparented to PID 1 and
  listed by ``pgrep raylet`` as ``<defunct>`` for a second or two, until it reaps them.
* Only SIGINT/exceptions clean up (``finally``): a test process killed by SIGTERM/SIGKILL leaves its
  namespaces (``ip netns list | grep <prefix>-<pid>-``) and ``/tmp/rayc-*`` behind.

Only the standard library (``ray`` runs in the subprocesses).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence

try:
    from netns import _cmd, _unique, netns_available  # tests/ is on sys.path
except ImportError:  # imported as tests.ray_cluster
    from tests.netns import _cmd, _unique, netns_available  # type: ignore[no-redef]

GCS_PORT = 6379
OBJECT_STORE_BYTES = 100 * 1000 * 1000
START_TIMEOUT_S = 90.0
# Declare a node dead after ~3 missed 500 ms health checks (the GCS pings each raylet).
FAST_HEALTH_CHECK = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}
# Set in every process started in a host namespace: that host's IP. A driver outside the head namespace
# must pass it, ``ray.init(_node_ip_address=os.environ[NODE_IP_ENV])``: without it Ray 2.60 finds the
# raylets by scanning the (shared) process table and picks the HEAD's, silently.
NODE_IP_ENV = "RAYC_NODE_IP"
_HOST_OK = re.compile(r"^[a-z][a-z0-9]{0,9}$")
_LOG_TAIL_CHARS = 3000


class RayClusterError(RuntimeError):
    """The cluster (namespaces or a Ray node) could not be built, or a wait timed out."""


def _ray_cli() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "ray")
    if os.access(exe, os.X_OK):
        return [exe]
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]


@functools.lru_cache(maxsize=None)
def ray_available() -> tuple[bool, str]:
    """(True, "") when :func:`ray_cluster` can run here: namespaces can be made and ``ray`` imports."""
    ok, why = netns_available()
    if not ok:
        return ok, why
    p = subprocess.run([sys.executable, "-c", "import ray; print(ray.__version__)"], capture_output=True,
                       text=True, timeout=60)
    if p.returncode != 0:
        return False, f"ray is not importable by {sys.executable}: {p.stderr.strip()[-300:]}"
    return True, ""


def _tail(path: str, chars: int = _LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


@dataclass
class RayNode:
    host: str
    proc: subprocess.Popen
    log: str                       # stdout+stderr of `ray start`
    temp_dir: str
    resources: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    num_cpus: float = 0


@dataclass
class RayCluster:
    """A running cluster. ``ns[host]`` / ``host_addr[host]``: each host's namespace and IP;
    ``address``: the GCS address "IP:PORT" (also ``RAY_ADDRESS`` in :meth:`env`)."""

    base: str
    subnet: str
    root: str
    bridge_ns: str
    address: str = ""
    system_config: dict = field(default_factory=dict)
    ns: dict = field(default_factory=dict)
    host_addr: dict = field(default_factory=dict)
    nodes: dict = field(default_factory=dict)   # host -> RayNode (the `ray start` of that host)
    dead_hosts: set = field(default_factory=set)
    _procs: list = field(default_factory=list, repr=False)
    _next_octet: int = 1

    # --- namespaces ------------------------------------------------------------------------------
    def add_host(self, host: str) -> str:
        """A new host namespace on the bridge (no Ray node yet); returns its IP."""
        if not _HOST_OK.match(host):
            raise ValueError(f"host names are 1-10 of [a-z0-9], starting with a letter, not {host!r}")
        if host in self.ns:
            raise ValueError(f"host {host!r} exists already")
        if self._next_octet > 250:
            raise ValueError("too many hosts for one /24")
        ns, addr = f"{self.base}-{host}", f"{self.subnet}.{self._next_octet}"
        self._next_octet += 1
        _cmd(["ip", "netns", "add", ns])
        self.ns[host] = ns
        _cmd(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
        port = f"v-{host}"
        _cmd(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
              "netns", self.bridge_ns])
        _cmd(["ip", "-n", self.bridge_ns, "link", "set", "dev", port, "master", "br0"])
        _cmd(["ip", "-n", self.bridge_ns, "link", "set", "dev", port, "up"])
        _cmd(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
        _cmd(["ip", "-n", ns, "link", "set", "dev", "eth0", "up"])
        deadline = time.monotonic() + 10
        while "LOWER_UP" not in _cmd(["ip", "-n", ns, "-o", "link", "show", "dev", "eth0"]).stdout:
            if time.monotonic() > deadline:
                raise RayClusterError(f"eth0 in {ns} did not come up")
            time.sleep(0.05)
        self.host_addr[host] = addr
        return addr

    def set_link(self, host: str, up: bool) -> None:
        """Cut (or restore) ``host``'s cable: its bridge port goes down, packets vanish silently."""
        _cmd(["ip", "-n", self.bridge_ns, "link", "set", "dev", f"v-{host}", "up" if up else "down"])

    # --- processes -------------------------------------------------------------------------------
    def env(self, host: str, extra: Optional[Mapping[str, str]] = None) -> dict:
        env = dict(os.environ)
        env.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": self.address, "PYTHONUNBUFFERED": "1",
                    "RAY_DISABLE_IMPORT_WARNING": "1", NODE_IP_ENV: self.host_addr.get(host, "")})
        env.pop("RAY_NAMESPACE", None)
        if extra:
            env.update(extra)
        return env

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *[str(a) for a in argv]]

    def popen(self, host: str, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
              **kw: Any) -> subprocess.Popen:
        """``subprocess.Popen`` in ``host``'s namespace (env: :meth:`env` plus ``env``); killed on exit."""
        proc = subprocess.Popen(self.argv(host, argv), env=self.env(host, env), **kw)
        self._procs.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, timeout: float = 120,
            **kw: Any) -> subprocess.CompletedProcess:
        """``subprocess.run`` in ``host``'s namespace; always with a timeout (120 s by default)."""
        return subprocess.run(self.argv(host, argv), env=self.env(host, env), timeout=timeout, **kw)

    def python(self, host: str, code: str, *args: str, env: Optional[Mapping[str, str]] = None,
               timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run Python ``code`` (e.g. a Ray driver: ``ray.init()`` picks up ``RAY_ADDRESS``) in ``host``'s
        namespace, output captured as text; ``check``: raise with its stderr when it fails."""
        try:
            p = self.run(host, [sys.executable, "-c", code, *args], env=env, timeout=timeout, capture_output=True,
                         text=True)
        except subprocess.TimeoutExpired as exc:
            raise RayClusterError(f"python in {host} timed out after {timeout} s; stderr: "
                                  f"{(exc.stderr or b'')[-_LOG_TAIL_CHARS:]!r}") from None
        if check and p.returncode != 0:
            raise RayClusterError(f"python in {host} failed ({p.returncode}):\n{p.stderr[-_LOG_TAIL_CHARS:]}")
        return p

    # --- Ray nodes -------------------------------------------------------------------------------
    def _start_node(self, host: str, args: list[str], timeout_s: float, env: Optional[Mapping[str, str]]) -> RayNode:
        temp_dir = os.path.join(self.root, host)
        os.makedirs(temp_dir, exist_ok=True)
        log = os.path.join(self.root, f"{host}.start.log")
        with open(log, "ab") as out:
            proc = self.popen(host, [*_ray_cli(), "start", "--block", "--node-ip-address", self.host_addr[host],
                                     "--temp-dir", temp_dir, "--object-store-memory", str(OBJECT_STORE_BYTES),
                                     "--disable-usage-stats", *args],
                              env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        node = RayNode(host=host, proc=proc, log=log, temp_dir=temp_dir)
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in _tail(log, 100_000):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {proc.returncode}" if proc.poll() is not None else f"not up in {timeout_s} s"
                raise RayClusterError(f"the Ray node on {host} {why}:\n{self.node_logs(host, node)}")
            time.sleep(0.2)
        self.nodes[host] = node
        return node

    def node_logs(self, host: str, node: Optional[RayNode] = None) -> str:
        """The tails of ``host``'s `ray start` output and its Ray logs (raylet, gcs_server, ...)."""
        node = node or self.nodes[host]
        parts = [f"--- ray start ({host}) ---\n{_tail(node.log)}"]
        logs = os.path.join(node.temp_dir, "session_latest", "logs")
        for name in ("gcs_server.err", "gcs_server.out", "raylet.err", "raylet.out"):
            text = _tail(os.path.join(logs, name), 1500)
            if text.strip():
                parts.append(f"--- {name} ---\n{text}")
        return "\n".join(parts)

    def start_head(self, num_cpus: float = 1, resources: Optional[Mapping[str, float]] = None,
                   labels: Optional[Mapping[str, str]] = None, system_config: Optional[Mapping[str, Any]] = None,
                   timeout_s: float = START_TIMEOUT_S, env: Optional[Mapping[str, str]] = None) -> RayNode:
        host = "head"
        if host not in self.ns:
            self.add_host(host)
        self.address = f"{self.host_addr[host]}:{GCS_PORT}"
        self.system_config = dict(FAST_HEALTH_CHECK if system_config is None else system_config)
        args = ["--head", "--port", str(GCS_PORT), "--num-cpus", _num(num_cpus), "--include-dashboard=false"]
        args += _res_args(resources, labels)
        if self.system_config:
            args += ["--system-config", json.dumps(self.system_config)]
        node = self._start_node(host, args, timeout_s, env)
        node.num_cpus, node.resources, node.labels = num_cpus, dict(resources or {}), dict(labels or {})
        return node

    def start_worker(self, host: str, num_cpus: float = 0, resources: Optional[Mapping[str, float]] = None,
                     labels: Optional[Mapping[str, str]] = None, timeout_s: float = START_TIMEOUT_S,
                     env: Optional[Mapping[str, str]] = None, wait: bool = True) -> RayNode:
        """A worker node on host ``host`` (a new namespace unless it exists), joined to the head.
        ``env``: extra environment of its `ray start` (its Ray workers inherit it). ``wait``: until
        the head lists it alive."""
        if not self.address:
            raise RayClusterError("start the head first")
        if host in self.nodes and host not in self.dead_hosts:
            raise ValueError(f"{host} runs a Ray node already")
        if host not in self.ns:
            self.add_host(host)
        args = ["--address", self.address, "--num-cpus", _num(num_cpus), *_res_args(resources, labels)]
        node = self._start_node(host, args, timeout_s, env)
        node.num_cpus, node.resources, node.labels = num_cpus, dict(resources or {}), dict(labels or {})
        self.dead_hosts.discard(host)
        if wait:
            self.wait_nodes(alive_hosts=[host], timeout_s=timeout_s)
        return node

    def kill_host(self, host: str, cut_link: bool = False, timeout_s: float = 10) -> None:
        """SIGKILL every process in ``host``'s namespace (its Ray node, its workers, whatever the test
        started there), as if the host lost power. ``cut_link``: first take its bridge port down, so
        no FIN/RST leaves either (the peers see silence, not closed connections); the link stays
        down until :meth:`set_link` (host, True)."""
        if cut_link:
            self.set_link(host, False)
        _kill_ns(self.ns[host], timeout_s)
        for proc in self._procs:
            if proc.poll() is None and proc.args[:4] == ["ip", "netns", "exec", self.ns[host]]:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self.dead_hosts.add(host)

    def nodes_info(self, timeout_s: float = 60) -> list[dict]:
        """``ray.nodes()`` as seen by a short driver in the head namespace."""
        return self.wait_nodes(timeout_s=timeout_s)

    def wait_nodes(self, alive: Optional[int] = None, dead: Optional[int] = None,
                   alive_hosts: Sequence[str] = (), dead_hosts: Sequence[str] = (),
                   timeout_s: float = 60) -> list[dict]:
        """Wait until the GCS lists ``alive`` live nodes (exactly), ``dead`` dead ones (at least), and
        the nodes of ``alive_hosts`` / ``dead_hosts`` (by IP) alive / dead; returns ``ray.nodes()``.

        One driver in the head namespace polls ``ray.nodes()`` every 0.2 s (a driver costs ~2 s of
        start-up, so this is for setup and assertions, not for timing below a second). Needs the head
        alive: after ``kill_host("head")`` it raises."""
        want = {"alive": alive, "dead": dead, "alive_ips": [self.host_addr[h] for h in alive_hosts],
                "dead_ips": [self.host_addr[h] for h in dead_hosts], "timeout": timeout_s}
        p = self.python("head", _WAIT_NODES, json.dumps(want), timeout=timeout_s + 60, check=False)
        lines = p.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        if p.returncode != 0 or result is None or not result["ok"]:
            summary = [(n["NodeManagerAddress"], n["Alive"]) for n in (result or {}).get("nodes", [])]
            logs = "\n".join(self.node_logs(h) for h in alive_hosts if h in self.nodes)
            raise RayClusterError(f"nodes not as wanted {want} within {timeout_s} s: {summary}\n"
                                  f"driver stderr: {p.stderr[-_LOG_TAIL_CHARS:]}\n{logs}")
        return result["nodes"]

    # --- teardown --------------------------------------------------------------------------------
    def _stop_everything(self) -> None:
        for ns in self.ns.values():
            _kill_ns(ns, 10)
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


_WAIT_NODES = r"""
import json, sys, time
want = json.loads(sys.argv[1])
import ray
ray.init(logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + want["timeout"]
while True:
    nodes = [{k: n.get(k) for k in ("NodeID", "Alive", "NodeManagerAddress", "Resources", "Labels")}
             for n in ray.nodes()]
    alive_ips = {n["NodeManagerAddress"] for n in nodes if n["Alive"]}
    dead_ips = {n["NodeManagerAddress"] for n in nodes if not n["Alive"]} - alive_ips
    ok = ((want["alive"] is None or len([n for n in nodes if n["Alive"]]) == want["alive"])
          and (want["dead"] is None or len([n for n in nodes if not n["Alive"]]) >= want["dead"])
          and all(ip in alive_ips for ip in want["alive_ips"]) and all(ip in dead_ips for ip in want["dead_ips"]))
    if ok or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(json.dumps({"ok": ok, "nodes": nodes}))
"""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _res_args(resources: Optional[Mapping[str, float]], labels: Optional[Mapping[str, str]]) -> list[str]:
    args = []
    if resources:
        args += ["--resources", json.dumps(dict(resources))]
    if labels:
        for k, v in labels.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", f"{k}{v}"):
                raise ValueError(f"label {k}={v}: keep keys and values to [A-Za-z0-9_.-]")
        args += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
    return args


def _kill_ns(ns: str, timeout_s: float) -> None:
    """SIGKILL every process in namespace ``ns`` until none is left (children forked meanwhile too)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = [int(p) for p in _cmd(["ip", "netns", "pids", ns], check=False).stdout.split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RayClusterError(f"processes {pids} in {ns} survive SIGKILL")
        time.sleep(0.05)


@contextlib.contextmanager
def ray_cluster(workers: Optional[Mapping[str, Mapping[str, Any]]] = None, head_num_cpus: float = 1,
                head_resources: Optional[Mapping[str, float]] = None, system_config: Optional[Mapping[str, Any]] = None,
                prefix: str = "rc", timeout_s: float = START_TIMEOUT_S) -> Iterator[RayCluster]:
    """A head node (namespace "head") and one worker node per entry of ``workers``: host name ->
    keyword arguments of :meth:`RayCluster.start_worker` (``num_cpus`` (default 0), ``resources``,
    ``labels``, ``env``). Waits until the head lists them all alive. Always torn down: every process
    in the namespaces SIGKILLed, the namespaces and the temp dirs deleted."""
    if not re.fullmatch(r"[a-z0-9]{1,6}", prefix):
        raise ValueError("prefix must be 1-6 of [a-z0-9]")
    base = _unique(prefix)
    subnet = f"10.{random.randint(0, 255)}.{random.randint(0, 255)}"
    root = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")  # short: unix socket paths must stay < 108 bytes
    c = RayCluster(base=base, subnet=subnet, root=root, bridge_ns=f"{base}-br")
    made_bridge = False
    try:
        _cmd(["ip", "netns", "add", c.bridge_ns])
        made_bridge = True
        _cmd(["ip", "-n", c.bridge_ns, "link", "add", "br0", "type", "bridge"])
        _cmd(["ip", "-n", c.bridge_ns, "link", "set", "dev", "br0", "up"])
        c.start_head(num_cpus=head_num_cpus, resources=head_resources, system_config=system_config, timeout_s=timeout_s)
        for host, kw in (workers or {}).items():
            c.start_worker(host, timeout_s=timeout_s, wait=False, **kw)
        if workers:
            c.wait_nodes(alive=1 + len(workers), alive_hosts=list(workers), timeout_s=timeout_s)
        yield c
    finally:
        try:
            c._stop_everything()
        finally:
            for ns in c.ns.values():
                _cmd(["ip", "netns", "del", ns], check=False)
            if made_bridge:
                _cmd(["ip", "netns", "del", c.bridge_ns], check=False)
            shutil.rmtree(root, ignore_errors=True)
