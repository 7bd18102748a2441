"""Where compared launches come from: record files, directories of them, or farm runs.

``load(ref, db=None)`` gives ``{cell: [BenchResult, ...]}`` with ``cell = (model, recipe, device)``:

- a ``bench --json`` record file: one launch;
- a directory of record files (``*.json``, each a BenchResult): their launches, by cell;
- ``run:ID`` (or an ID the database has) with ``--db``: a farm run's measured jobs, one launch per
  job, by cell.

``history_baseline`` is the gate's ``--baseline history``: the launches of the last k good farm
runs of the candidate's own cell, on the same OS and runner version.

Anything else is a UsageError that says what was expected. An artifact directory (one that has a
``manifest.json``) is not a source of records: the gate measures it (``api.gate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from edgeprobe.errors import ResultError, UsageError
from edgeprobe.results import BenchResult

Cell = tuple[str, str, str]  # (model, recipe, device)


def cell_of(r: BenchResult) -> Cell:
    return (r.manifest.model_ref, r.manifest.recipe, r.device.id)


def _group(records: list[BenchResult]) -> dict[Cell, list[BenchResult]]:
    out: dict[Cell, list[BenchResult]] = {}
    for r in records:
        out.setdefault(cell_of(r), []).append(r)
    return out


def is_records(ref: str) -> bool:
    """Whether ``ref`` names stored records (a record file or directory, or a farm run), not something to measure."""
    p = Path(ref)
    return ref.startswith("run:") or (p.is_file() and p.suffix == ".json") or (
        p.is_dir() and not (p / "manifest.json").exists() and any(p.glob("*.json")))


def _farm_run(run_id: str, db: Any) -> dict[Cell, list[BenchResult]]:
    from edgeprobe.farm import jobs

    rows = [r for r in jobs.results(db, run_id) if r["state"] == "done"]
    if not rows:
        raise UsageError(f"no measured job in farm run {run_id!r} of {db.url}")
    return _group([BenchResult.from_dict(jobs.record(db, r["key"])) for r in rows])


def load(ref: str, db: Optional[Any] = None) -> dict[Cell, list[BenchResult]]:
    """The launches ``ref`` names, by cell (see the module docstring)."""
    p = Path(ref)
    try:
        if p.is_file():
            return _group([BenchResult.load(p)])
        if p.is_dir() and not (p / "manifest.json").exists():
            files = sorted(p.glob("*.json"))
            if not files:
                raise UsageError(f"{ref}: a directory with no record (.json) files")
            return _group([BenchResult.load(f) for f in files])
    except ResultError as exc:
        raise UsageError(f"{ref}: not a bench record: {exc}") from None
    if p.is_dir():
        raise UsageError(f"{ref} is an artifact directory: measure it with `edgeprobe gate`, or compare records")
    run_id = ref.removeprefix("run:")
    if db is None:
        raise UsageError(f"{ref}: no such file; a farm run needs --db (or $EDGEPROBE_FARM_DB)")
    return _farm_run(run_id, db)


def history_baseline(db: Any, candidate: BenchResult, *, k: int = 5, min_count: int = 3) -> tuple[list[BenchResult], list]:
    """The launches of the last ``k`` farm runs that measured ``candidate``'s cell (model, recipe,
    backend, format, device) on the same OS and runner version, and those runs' history points.
    Fewer than ``min_count`` such runs: a UsageError (the gate cannot run without a baseline)."""
    from edgeprobe.gate.history import history

    if db is None:
        raise UsageError("--baseline history needs the farm database (--db or $EDGEPROBE_FARM_DB)")
    m, env, runner = candidate.manifest, candidate.run.environment, candidate.run.runner
    os_name, version = (env.os if env else None), (runner.version if runner else None)
    points = history(db, model=m.model_ref, recipe=m.recipe, device_id=candidate.device.id, os=os_name,
                     runner_version=version, backend=m.backend, format=m.format)[-k:]
    cell = cell_of(candidate)
    if len(points) < min_count:
        raise UsageError(f"baseline missing from history: {len(points)} good farm run(s) of {'/'.join(cell)} "
                         f"(os {os_name}, runner {version}) in {db.url}; need at least {min_count}")
    records = []
    for point in points:
        for r in _farm_run(point.run_id, db).get(cell, []):
            r_env, r_runner = r.run.environment, r.run.runner
            if (r_env.os if r_env else None) == os_name and (r_runner.version if r_runner else None) == version:
                records.append(r)
    return records, points
