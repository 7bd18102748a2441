"""What runs on an agent host of a farm on Ray (``farm/executors/ray.py`` is the driver's side):
the device actor that measures, the agent's inventory actor, and the artifacts shipped to it.
Nothing here imports torch: an agent host needs edgeprobe, Ray and the runner bundles only."""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from edgeprobe.errors import ArtifactError, TransportError


def _agent_cache_dir() -> Path:
    env = os.environ.get("EDGEPROBE_AGENT_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("edgeprobe")) / "agent-artifacts"


def pack_artifact(artifact: Any) -> dict:
    """An artifact as plain bytes for the object store: its manifest, model and vectors (the ETRecord
    stays on the driver: measuring does not read it)."""
    from edgeprobe.artifact import MANIFEST

    m = artifact.manifest
    names = (MANIFEST, m.artifact_file, m.vectors_file)
    return {"cache_key": m.cache_key, "files": {n: (artifact.dir / n).read_bytes() for n in names}}


def unpack_artifact(packed: Mapping[str, Any]) -> Any:
    """The artifact in this host's agent cache (written once, atomically; its sha256s verified)."""
    from edgeprobe.artifact import load_artifact

    key = str(packed["cache_key"])
    if not re.fullmatch(r"[0-9a-f]{8,64}", key):
        raise ArtifactError(f"shipped artifact has a malformed cache key {key[:80]!r}")
    root = _agent_cache_dir()
    final = root / key
    if final.is_dir():
        try:
            return load_artifact(final)
        except ArtifactError:
            import shutil

            shutil.rmtree(final, ignore_errors=True)  # damaged: replaced by the shipped copy
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    for name, data in packed["files"].items():
        if "/" in name or name in ("", ".", ".."):
            raise ArtifactError(f"shipped artifact names a file {name!r} outside its directory")
        (tmp / name).write_bytes(data)
    try:
        os.rename(tmp, final)
    except OSError:  # another actor of this host put it there first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return load_artifact(final)


class DeviceActor:
    """One device of an agent host, as a Ray actor: opens the device on first use (one measurement
    session per artifact format, each with that format's runner) and measures what the driver sends.
    Runs in a worker process of the agent's node, so a device token comes from the agent's own
    environment (``token_env``), never over the cluster."""

    def __init__(self, local_id: str, token_env: Optional[str]) -> None:
        self.local_id, self.token_env = local_id, token_env
        self.sessions: dict[str, Any] = {}
        self.artifacts: dict[str, Any] = {}  # cache key -> Artifact in this host's agent cache

    def artifact(self, cache_key: str, boxed_ref: Sequence[Any]) -> Any:
        """The artifact of ``cache_key``: fetched from the object store (``boxed_ref``: its ref in a
        list, so Ray does not fetch it for every call) and verified on its first use only."""
        if cache_key not in self.artifacts:
            import ray

            self.artifacts[cache_key] = unpack_artifact(ray.get(boxed_ref[0]))
        return self.artifacts[cache_key]

    def ready(self) -> dict:
        import ray

        from edgeprobe.versions import __version__

        return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "hostname": socket.gethostname(),
                "pid": os.getpid(), "edgeprobe": __version__}

    def measure(self, cache_key: str, boxed_ref: Sequence[Any], config: Any) -> str:
        """The measurement's versioned record as JSON (the driver parses and stores it)."""
        from edgeprobe.devices import default_runner
        from edgeprobe.farm.inventory import DeviceEntry, token_for
        from edgeprobe.session import open_session

        artifact = self.artifact(cache_key, boxed_ref)
        fmt = artifact.manifest.format
        if fmt not in self.sessions:
            entry = DeviceEntry(self.local_id, {}, self.token_env, 0, "agent")
            self.sessions[fmt] = open_session(self.local_id, runner=default_runner(fmt), token=token_for(entry))
        try:
            return self.sessions[fmt].measure(artifact, config).to_json(indent=None)
        except TransportError:
            self.close(fmt)  # re-opened on the next call
            raise

    def close(self, fmt: Optional[str] = None) -> None:
        for f in [fmt] if fmt else list(self.sessions):
            session = self.sessions.pop(f, None)
            if session is not None:
                try:
                    session.close()
                except Exception:  # noqa: BLE001 - a device that is gone must not fail the close
                    pass

    def facts(self) -> dict:
        return {"modules": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "executorch", "torchvision"))}


class AgentInfo:
    """An agent's inventory, published as a detached named actor on the agent's own node (it dies
    with the node, so a dead host's devices are no longer listed)."""

    def __init__(self, name: str, devices: list, facts: dict) -> None:
        self.name, self.devices, self.facts = name, devices, facts

    def inventory(self) -> dict:
        return {"name": self.name, "devices": self.devices, "facts": self.facts}
