"""Reduced-precision recipes that a lowering target carries out in its own toolchain (kind ``target``).

``fp16``: the model runs in half precision inside ExecuTorch's XNNPACK delegate, with fp32 inputs
and outputs (the artifact's test vectors and every caller stay as for fp32). The lowering does the
work (``lower/executorch.py``: the fp32 model is wrapped in casts and ``.half()``-ed before export),
because fp16 is a property of the compiled graph, not of an eager model we could hand on. XNNPACK's
f16 kernels accumulate in fp32 on x86 (F16C + FMA: each tile is widened, multiplied and added in
fp32, stored as fp16) and run native fp16 arithmetic on ARMv8.2+ cores (``neonfp16arith``), where
fp16 is the fast path; so the fidelity measured on this host is not the phone's, which the sweep's
own on-device scoring answers.

The registered function is never called: ``apply_and_lower`` hands a ``target`` step to the lowering
(``lower.TargetRecipe``) and refuses a format whose target does not carry it out.
"""

from __future__ import annotations

from typing import Any

from edgeprobe.compress import Context, recipe
from edgeprobe.errors import UnsupportedCombinationError


@recipe("fp16", "target", "XNNPACK fp16 (fp32 inputs/outputs; fp32 accumulation on x86, native fp16 on "
        "ARMv8.2+), carried out by the ExecuTorch lowering (--format pte --backend xnnpack)")
def fp16(model: Any, ctx: Context):
    raise UnsupportedCombinationError("fp16 is carried out by the lowering target: use compress.apply_and_lower "
                                      "(or edgeprobe export/sweep) with --format pte --backend xnnpack")
