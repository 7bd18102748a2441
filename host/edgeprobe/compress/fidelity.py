"""Fidelity of a lowered artifact against the fp32 model, from real outputs.

The artifact itself (the file the device runs) is executed in-process on this host by its own
runtime, through the Python runner's backend for its format (a .pte on ExecuTorch's runtime with the
XNNPACK and quantized kernels the native runner links; a .onnx on ONNX Runtime; an OpenVINO, ncnn or
LiteRT file on theirs), one example-sized batch at a time, and compared with the fp32 eager model on
the same inputs. Kernels on an ARM phone may round differently in the last bits; these numbers
describe the artifact's arithmetic, measured on the host CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from edgeprobe.compress import Dataset
from edgeprobe.models import flatten_outputs


@dataclass(frozen=True)
class Fidelity:
    samples: int
    sqnr_db: float  # 10 log10(sum ref^2 / sum (ref - out)^2); inf when identical
    cosine: float  # mean per-sample cosine similarity of the flattened outputs
    max_abs_error: float
    top1_agreement: Optional[float]  # fraction of samples whose argmax matches fp32's (classifier outputs)
    accuracy: Optional[float]  # top-1 accuracy against labels, when given
    reference_accuracy: Optional[float]  # the fp32 model's, on the same samples
    method: str = "artifact executed in-process by its own runtime on the host; fp32 eager reference"


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    noise = float(((reference.double() - test.double()) ** 2).sum())
    signal = float((reference.double() ** 2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def _artifact_method(path: Path) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The artifact loaded by its format's runner backend (the runtime the device runs)."""
    from edgeprobe_runner import backends

    backend = backends.for_path(str(path))
    if backend.runtime == "executorch":
        import executorch.kernels.quantized  # noqa: F401 - registers the quantized kernels in the runtime
    mod = backends.module(backend)
    mod.import_runtime()
    loaded = mod.load(str(path), "forward", 0)
    return lambda *xs: tuple(loaded.run(list(xs)))


def evaluate(artifact_path: Path, reference: torch.nn.Module, data: Dataset, example_inputs: tuple[torch.Tensor, ...],
             max_samples: int = 512) -> Fidelity:
    """Run the artifact and the fp32 ``reference`` on ``data`` (single-input models) and compare."""
    run = _artifact_method(Path(artifact_path))
    batch = int(example_inputs[0].shape[0])
    n = min(len(data), max_samples) // batch * batch
    if n == 0:
        raise ValueError(f"need at least {batch} evaluation samples")
    refs, outs = [], []
    with torch.no_grad():
        for i in range(0, n, batch):
            x = data.x[i:i + batch].to(example_inputs[0].dtype)
            refs.append(torch.cat([t.reshape(batch, -1).float() for t in flatten_outputs(reference(x))], 1))
            outs.append(torch.cat([t.reshape(batch, -1).float() for t in run(x)], 1))
    ref, out = torch.cat(refs), torch.cat(outs)
    cos = torch.nn.functional.cosine_similarity(ref.double(), out.double(), dim=1, eps=1e-12)
    top1 = acc = ref_acc = None
    first = flatten_outputs(reference(data.x[:batch].to(example_inputs[0].dtype)))[0]
    if first.dim() == 2 and first.shape[1] > 1:  # class scores: the first output is (batch, classes)
        classes = first.shape[1]
        r, o = ref[:, :classes].argmax(1), out[:, :classes].argmax(1)
        top1 = float((r == o).double().mean())
        if data.y is not None:
            y = data.y[:n]
            acc, ref_acc = float((o == y).double().mean()), float((r == y).double().mean())
    return Fidelity(samples=n, sqnr_db=sqnr_db(ref, out), cosine=float(cos.mean()),
                    max_abs_error=float((ref - out).abs().max()), top1_agreement=top1, accuracy=acc,
                    reference_accuracy=ref_acc)
