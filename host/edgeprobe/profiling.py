"""Per-operator profiles: run an artifact with ETDump through a measurement session and read the
per-operator times back with ExecuTorch's Inspector (imported only when a table is built)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from edgeprobe.errors import ArtifactError
from edgeprobe.results import BenchResult

if TYPE_CHECKING:
    from edgeprobe.lower import Artifact
    from edgeprobe.session import MeasureConfig, MeasureSession


@dataclass(frozen=True)
class OperatorRow:
    name: str
    delegated: bool
    backend: Optional[str]
    count: int
    mean_ms: float
    total_ms: float


@dataclass(frozen=True)
class ProfileReport:
    result: BenchResult
    operators: tuple[OperatorRow, ...]
    etdump_path: Optional[Path]

    @property
    def total_ms(self) -> float:
        return sum(r.total_ms for r in self.operators)


def profile_on(session: "MeasureSession", artifact: "Artifact", config: "MeasureConfig", *,
               etdump_path: Optional[Union[str, Path]] = None) -> ProfileReport:
    """Run ``artifact`` with ETDump on ``session``'s device and build its operator table.

    Timings from a profiled run include the tracer's overhead; use ``bench`` for latency."""
    if artifact.etrecord_path is None or not artifact.etrecord_path.is_file():
        raise ArtifactError(f"{artifact.dir} has no ETRecord; export it again to profile it")
    keep = Path(etdump_path) if etdump_path else Path(tempfile.mkdtemp(prefix="edgeprobe-profile-")) / "run.etdump"
    if session.log:
        session.log(f"profiling on {session.id}: {config.iterations} iterations with ETDump")
    result = session.measure(artifact, config, etdump_local=keep)
    if not result.ok:
        return ProfileReport(result, (), None)
    return ProfileReport(result, operator_table(keep, artifact.etrecord_path), keep)


def operator_table(etdump: Path, etrecord: Path) -> tuple[OperatorRow, ...]:
    """Per-operator rows (slowest first) from an ETDump + ETRecord, via executorch's Inspector."""
    from executorch.devtools import Inspector

    inspector = Inspector(etdump_path=str(etdump), etrecord=str(etrecord))
    rows: dict[tuple[str, bool, Optional[str]], list[float]] = {}
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is None or not event.name or event.name in ("Method::execute", "Program::load_method"):
                continue
            key = (event.name, bool(event.is_delegated_op), event.delegate_backend_name)
            rows.setdefault(key, []).extend(event.perf_data.raw)
    out = [OperatorRow(name, delegated, backend_name, len(raw), sum(raw) / len(raw), sum(raw))
           for (name, delegated, backend_name), raw in rows.items() if raw]
    return tuple(sorted(out, key=lambda r: r.total_ms, reverse=True))
