"""ExecuTorch target: torch.export -> EXIR edge -> (XNNPACK | portable | Vulkan) -> .pte (+ ETRecord).

It carries out one recipe step itself (``RECIPES``): ``fp16``. ExecuTorch 1.5.1's XNNPACK
partitioner has no fp16 switch (its ``ConfigPrecisionType`` is FP32 / static / dynamic quant); it
delegates whatever dtype the graph has. So the model is made half precision before export: a
copy ``.half()``-ed inside a wrapper that casts the fp32 inputs to fp16 and the outputs back. The
two casts are dtype conversions, which the partitioner leaves to the portable kernels
(``_to_dim_order_copy``), so the .pte keeps fp32 inputs and outputs (its vectors and every caller
stay as for fp32) and runs fp16 inside the delegate: ETDump names its operators
``Convolution (NHWC, F16) IGEMM`` (tests/test_fp16.py checks that, not a flag). Convolution weights
are serialized as fp32 by the delegate's ``op_conv2d`` (``force_fp32``) and packed to fp16 when the
program loads, so the file barely shrinks; linear weights are stored as fp16.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

from edgeprobe.errors import LoweringError, UnsupportedCombinationError
from edgeprobe.fsutil import _fault_point
from edgeprobe.lower import Lowered, TargetRecipe, translate_export_error
from edgeprobe.models import ModelSpec

FILE_NAME = "model.pte"
ETRECORD = "etrecord.bin"
RECIPES = frozenset({"fp16"})
# graph nodes that are not model operators left outside the delegate
_PLUMBING = ("executorch_call_delegate", "getitem", "_to_dim_order_copy", "_to_copy")


def _partitioners(backend: str) -> list:
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    if backend == "portable":
        return []
    if backend == "vulkan":  # allowed only for a device that runs it (capabilities.DEVICE_DELEGATES)
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

        return [VulkanPartitioner()]
    raise LoweringError(f"no ExecuTorch partitioner wired for backend {backend!r}")


def _fp16_program(spec: ModelSpec) -> Any:
    """``spec``'s model in half precision between fp32 casts, exported with ``spec``'s example inputs."""
    import torch
    from torch.utils import _pytree as pytree

    class Fp16(torch.nn.Module):
        """fp32 in, fp16 inside, fp32 out (only float32 tensors are cast: integer inputs pass as they are)."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner.half()

        def forward(self, *inputs: Any) -> Any:
            half = [x.half() if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else x for x in inputs]
            out = self.inner(*half)
            return pytree.tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.dtype == torch.float16
                                   else t, out)

    inner = copy.deepcopy(spec.module) if spec.module is not None else copy.deepcopy(spec.program().module())
    with torch.no_grad():
        return torch.export.export(Fp16(inner.eval()), spec.example_inputs, strict=False)


def _outside_delegate(edge: Any) -> list[str]:
    """The operators the partitioner left to the portable kernels (besides the casts and the delegate call)."""
    ops = []
    for node in edge.exported_program().graph.nodes:
        name = str(getattr(node.target, "__name__", node.target))
        if node.op == "call_function" and not any(p in name for p in _PLUMBING):
            ops.append(name)
    return sorted(set(ops))


def lower(spec: ModelSpec, backend: str, out_dir: Path, notes: list[str],
          target_recipe: Optional[TargetRecipe] = None) -> Lowered:
    """Write ``model.pte`` (and its ETRecord); with ``target_recipe`` fp16, an fp16 XNNPACK program
    and its own outputs on this host (``host_outputs``: the device's are checked against them)."""
    import executorch.kernels.quantized  # noqa: F401 - out-variants of quantized_decomposed ops (weight-only)
    from executorch.exir import to_edge_transform_and_lower

    fp16 = target_recipe is not None
    if fp16 and target_recipe.name not in RECIPES:
        raise LoweringError(f"the ExecuTorch target does not carry out recipe {target_recipe.name!r}")
    if fp16 and backend != "xnnpack":
        raise UnsupportedCombinationError(f"recipe fp16 runs on XNNPACK's fp16 kernels; --backend {backend} has "
                                          "none (the portable kernels would run it as slow reference code): "
                                          "use --backend xnnpack")
    try:
        # fp32: the same export the cache key hashed (exported once per spec); fp16: that model, halved
        ep = _fp16_program(spec) if fp16 else spec.program()
        edge = to_edge_transform_and_lower(ep, partitioner=_partitioners(backend), generate_etrecord=True)
        outside = _outside_delegate(edge) if fp16 else []
        prog = edge.to_executorch()
    except (LoweringError, UnsupportedCombinationError):
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
    if not fp16:
        return Lowered(FILE_NAME, planned, etrecord_file)
    from edgeprobe.lower import _run_pte

    notes.append("fp16: XNNPACK runs the model in half precision (inputs and outputs stay fp32, cast by the "
                 "portable kernels)" + (f"; left outside the delegate, in fp16 portable kernels: {', '.join(outside)}"
                                        if outside else ""))
    range_note = _fp16_range_note(spec)
    if range_note:
        notes.append(range_note)
        target_recipe.log(range_note)
    target_recipe.log("fp16: running the .pte on this host for the device check's expected outputs")
    return Lowered(FILE_NAME, planned, etrecord_file, host_outputs=_run_pte(out_dir / FILE_NAME, spec.example_inputs))


FP16_MIN_NORMAL, FP16_MAX = 2.0 ** -14, 65504.0


def _fp16_range_note(spec: ModelSpec) -> str:
    """Why fp16 may score badly, when the fp32 outputs say so: all below fp16's smallest normal number
    (a randomly initialised torchvision model's logits are ~1e-9 and become 0), or beyond its largest."""
    peaks = [t.detach().abs().max().item() for t in spec.eager_outputs(spec.example_inputs)
             if t.is_floating_point() and t.numel()]
    if not peaks:
        return ""
    peak = max(peaks)
    if 0 < peak < FP16_MIN_NORMAL:
        return (f"fp16: the fp32 model's outputs peak at |y| = {peak:.3g}, below fp16's smallest normal number "
                f"{FP16_MIN_NORMAL:.3g}: in fp16 they lose their precision or flush to zero (untrained weights?)")
    if peak > FP16_MAX:
        return f"fp16: the fp32 model's outputs reach |y| = {peak:.3g}, beyond fp16's largest number {FP16_MAX:g}"
    return ""
