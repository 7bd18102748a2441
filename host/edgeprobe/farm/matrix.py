"""A farm file's matrix expanded into jobs (cell × launch), each with a key stable across runs.

A *group* ``(model, recipe, backend, format)`` is one lowering unit: the caller lowers each group
once (:func:`artifact_groups`) and passes the artifact keys to :func:`expand`, which yields one job
per group × selected device × launch.

Order: by device (file order), then group (models, recipes, backends, formats in the order the
matrix lists them), then launch, so one device's jobs are contiguous (one worker, one session per
device) and a cell's launches follow each other with ``cooldown_s`` between them.

Keys: :func:`job_key` is the sha256 of canonical JSON (sorted keys) of the run id, artifact key,
device id, launch and settings: the same inputs give the same key in any process, any change
another. The run id is part of it: resuming a run (same id) repeats nothing, while a new run (a
nightly one, say) measures the same cells again, as a new run should. A group
whose lowering failed (artifact key None) still yields its jobs, with ``artifact_key=None`` and a
key computed from :func:`group_key` (the group itself) in the artifact key's place, so the failed
rows have stable keys too and a later run whose lowering succeeds gets new ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from edgeprobe.errors import UsageError
from edgeprobe.farm.inventory import DeviceEntry, FarmFile, select

Group = tuple[str, str, str, str]  # (model, recipe, backend, format)


@dataclass(frozen=True)
class Cell:
    model: str
    recipe: str
    backend: str
    format: str
    device_id: str

    @property
    def group(self) -> Group:
        return (self.model, self.recipe, self.backend, self.format)


@dataclass(frozen=True)
class Settings:
    """How each job measures (the same for every job of a farm file)."""

    iterations: int = 20
    warmup: int = 3
    min_seconds: float = 0.0
    max_iterations: int = 0
    threads: int = 0
    timeout_s: float = 300.0
    cooldown_s: float = 0.0
    min_battery_percent: Optional[float] = None
    max_thermal_status: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Job:
    """One fresh runner launch of one cell; ``launch`` counts from 0."""

    key: str
    cell: Cell
    launch: int
    settings: Settings
    artifact_key: Optional[str]


def settings_of(farm: FarmFile) -> Settings:
    """The measurement settings of ``farm``'s matrix."""
    m = farm.matrix
    return Settings(**{f.name: getattr(m, f.name) for f in dataclasses.fields(Settings)})


def _sha(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_FLOATS = ("min_seconds", "timeout_s", "cooldown_s", "min_battery_percent")


def group_key(group: Group) -> str:
    """The stand-in for a group's artifact key when its lowering failed."""
    model, recipe, backend, format = group
    return "group:" + _sha({"model": model, "recipe": recipe, "backend": backend, "format": format})


def job_key(artifact_key: str, device_id: str, launch: int, settings: Settings, run_id: str = "") -> str:
    """sha256 hex of the canonical JSON of these: the same everywhere for the same inputs."""
    if not isinstance(artifact_key, str) or not artifact_key:
        raise ValueError(f"artifact_key must be a non-empty string, got {artifact_key!r} (use group_key)")
    return _sha({"run_id": run_id, "artifact_key": artifact_key, "device_id": device_id, "launch": int(launch),
                 "settings": {k: (float(v) if k in _FLOATS and v is not None else v)
                              for k, v in settings.to_dict().items()}})  # 0 and 0.0: one key


def _pairs(backends: Sequence[str], formats: Sequence[str]) -> list[tuple[str, str]]:
    """The (backend, format) pairs that exist: a backend applies to the formats that have it
    (``backends = ["xnnpack", "cpu"]``, ``formats = ["pte", "ptl"]``: pte/xnnpack and ptl/cpu).
    A pair that exists but cannot run here (pte/vulkan) is kept: its rows fail with the reason."""
    from edgeprobe.lower.capabilities import TABLE

    known = {(c.backend, c.format) for c in TABLE}
    return [(b, f) for b in backends for f in formats if (b, f) in known]


def _backends_by_format() -> str:
    """``pte: xnnpack, portable, ...; ptl: cpu; ...`` from the capability table."""
    from edgeprobe.lower.capabilities import TABLE

    formats: dict[str, list[str]] = {}
    for c in TABLE:
        formats.setdefault(c.format, []).append(c.backend)
    return "; ".join(f"{f}: {', '.join(b)}" for f, b in formats.items())


def artifact_groups(farm: FarmFile) -> list[Group]:
    """The distinct lowering units, in matrix order (models, then recipes, backends, formats)."""
    m = farm.matrix
    pairs = _pairs(m.backends, m.formats)
    if not pairs:
        raise UsageError(f"{farm.path}:{m.line}: no backend of {list(m.backends)} applies to the formats "
                         f"{list(m.formats)} ({_backends_by_format()})")
    return [(model, recipe, backend, format) for model in m.models for recipe in m.recipes for backend, format in pairs]


def expand(farm: FarmFile, artifact_keys: Mapping[Group, Optional[str]],
           devices: Optional[Sequence[DeviceEntry]] = None, *, run_id: str = "") -> list[Job]:
    """Every group × device (default: the matrix's selection) × launch, in the module's order.

    ``artifact_keys`` must hold every group of :func:`artifact_groups` (None: lowering failed).
    Two groups with the same artifact key would give the same job keys: a ValueError.
    """
    groups = artifact_groups(farm)
    missing = [g for g in groups if g not in artifact_keys]
    if missing:
        raise ValueError(f"no artifact key (or None) for group(s) {missing}")
    owner: dict[str, Group] = {}
    for g in groups:
        key = artifact_keys[g]
        if key is not None:
            if key in owner:
                raise ValueError(f"groups {owner[key]} and {g} have the same artifact key {key}")
            owner[key] = g
    settings = settings_of(farm)
    chosen = select(farm) if devices is None else list(devices)
    jobs: list[Job] = []
    for d in chosen:
        for g in groups:
            key = artifact_keys[g]
            cell = Cell(*g, device_id=d.id)
            for launch in range(farm.matrix.launches):
                jobs.append(Job(job_key(key if key is not None else group_key(g), d.id, launch, settings, run_id),
                                cell, launch, settings, key))
    return jobs
