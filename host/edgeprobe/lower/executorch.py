"""ExecuTorch target: torch.export -> EXIR edge -> (XNNPACK | portable) -> .pte (+ ETRecord)."""

from __future__ import annotations

from pathlib import Path

from edgeprobe.errors import LoweringError
from edgeprobe.fsutil import _fault_point
from edgeprobe.lower import Lowered, translate_export_error
from edgeprobe.models import ModelSpec

FILE_NAME = "model.pte"
ETRECORD = "etrecord.bin"


def _partitioners(backend: str) -> list:
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    if backend == "portable":
        return []
    raise LoweringError(f"no ExecuTorch partitioner wired for backend {backend!r}")


def lower(spec: ModelSpec, backend: str, out_dir: Path, notes: list[str]) -> Lowered:
    import executorch.kernels.quantized  # noqa: F401 - out-variants of quantized_decomposed ops (weight-only)
    from executorch.exir import to_edge_transform_and_lower

    try:
        ep = spec.program()  # the same export the cache key hashed (exported once per spec)
        edge = to_edge_transform_and_lower(ep, partitioner=_partitioners(backend), generate_etrecord=True)
        prog = edge.to_executorch()
    except LoweringError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.export / EXIR raise many kinds
        raise translate_export_error(spec, exc) from exc
    with open(out_dir / FILE_NAME, "wb") as f:
        prog.write_to_file(f)
    _fault_point("lower:model-written")
    etrecord_file = None
    try:
        prog.get_etrecord().save(str(out_dir / ETRECORD))
        etrecord_file = ETRECORD
    except Exception as exc:  # noqa: BLE001 - profiling aid only; the artifact stays valid
        notes.append(f"no ETRecord written ({type(exc).__name__}: {exc}); `edgeprobe profile` cannot map operators")
    # The sizes MethodMeta::memory_planned_buffer_size() reports at runtime: entry 0 of
    # non_const_buffer_sizes is reserved, the rest are the planned arenas.
    plan = prog.executorch_program.execution_plan[0]
    planned = tuple(int(s) for s in plan.non_const_buffer_sizes[1:])
    return Lowered(FILE_NAME, planned, etrecord_file)
