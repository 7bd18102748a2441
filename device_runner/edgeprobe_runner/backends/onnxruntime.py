"""ONNX Runtime for the Python runner: a `.onnx` on ``onnxruntime.InferenceSession`` (CPU provider).

Threads: ``--threads N`` sets ``intra_op_num_threads = N`` (the session's pool is N - 1 workers plus
the calling thread, so N threads run an operator) and ``inter_op_num_threads = 1`` (operators run
one after another, as in the other runtimes). ``--threads 0`` leaves onnxruntime its default, the
number of physical cores as it counts them, which its API does not report: ``threads_used`` is then
null, with the reason in ``THREADS_UNKNOWN``. Inputs and outputs cross as torch tensors (numpy views,
no copies), so the runner's vectors and output check are the ones of every other format.
"""

from __future__ import annotations

import os
from typing import Optional

from edgeprobe_runner import build_info
from edgeprobe_runner.backends import Loaded, LoadError, Unsupported

RUNTIME = "onnxruntime"
THREADS_UNKNOWN = ("--threads 0: onnxruntime chose its default intra-op pool (physical cores as it counts "
                   "them), which its API does not report")

# ONNX tensor type -> torch dtype name (what the runner makes inputs of ones from)
_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
                "tensor(bfloat16)": "bfloat16", "tensor(int64)": "int64", "tensor(int32)": "int32",
                "tensor(int16)": "int16", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def import_runtime() -> str:
    """Import onnxruntime (before the runner's memory baseline); its version."""
    import onnxruntime

    return str(onnxruntime.__version__)


def library_path() -> Optional[str]:
    """The Python extension that holds the CPU provider's kernels (``onnxruntime_pybind11_state*.so``; a
    build that links them from a separate ``libonnxruntime`` names that one)."""
    import onnxruntime

    capi = [os.path.join(d, "capi") for d in onnxruntime.__path__]
    return build_info.loaded_library(("onnxruntime_pybind11_state", "libonnxruntime.so"), capi)


def load(path: str, method: str, threads: int) -> Loaded:
    """The session; input specs empty when a dimension is symbolic; threads None when onnxruntime chose."""
    import numpy as np
    import onnxruntime as ort
    import torch

    if method != "forward":
        raise Unsupported(f"a .onnx has one graph; --method {method!r} is for .pte/.ptl")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  (InvalidProtobuf, Fail, ...: onnxruntime's own classes)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadError(f"cannot load {path} with onnxruntime: {first}") from None
    names = [i.name for i in session.get_inputs()]
    specs = []
    for i in session.get_inputs():
        if i.type not in _ONNX_DTYPES or not all(isinstance(d, int) for d in i.shape):
            specs = []
            break
        specs.append((_ONNX_DTYPES[i.type], tuple(i.shape)))

    def run(inputs: list) -> list:
        if len(inputs) != len(names):
            raise ValueError(f"the model takes {len(names)} inputs, {len(inputs)} were given")
        feed = {n: t.detach().contiguous().numpy() for n, t in zip(names, inputs)}
        return [torch.from_numpy(np.ascontiguousarray(y)) for y in session.run(None, feed)]

    return Loaded(run, specs, threads or None, None if threads else THREADS_UNKNOWN)
