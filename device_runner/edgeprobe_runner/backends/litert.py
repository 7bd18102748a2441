"""LiteRT (TFLite) for the Python runner: a `.tflite` on ``ai_edge_litert.interpreter.Interpreter``.

Delegate: the interpreter applies XNNPACK by default (op resolver AUTO); ``load`` checks that it did
(a ``DELEGATE`` node in the execution plan) and refuses to measure otherwise, because the
artifact's backend is ``xnnpack`` and builtin kernels would be another measurement under its name.

Threads: ``--threads N`` passes ``num_threads = N`` (XNNPACK's pool is N - 1 workers plus the calling
thread). ``--threads 0`` leaves ``num_threads`` unset, LiteRT's default (-1), with which XNNPACK
makes no pool. Neither is reported by the interpreter's API, so ``threads_used`` is read from the
process: 1 + the threads that building the interpreter started (``/proc/self/task``; the runner
loads one model per process, so the count is that interpreter's own); where that cannot be read it
is the number given, or null with ``threads_note`` for 0.
"""

from __future__ import annotations

import os
from typing import Optional

from edgeprobe_runner import build_info
from edgeprobe_runner.backends import Loaded, LoadError, Unsupported

RUNTIME = "litert"
LIBRARY = "libpywrap_litert_common.so"  # the interpreter and XNNPACK, linked in; the _pywrap_*.so are stubs over it
THREADS_UNKNOWN = ("--threads 0: LiteRT's default num_threads (-1) was used; this system has no "
                   "/proc/self/task to count the threads it started")
THREADS_DEFAULT = "--threads 0: LiteRT's default num_threads (-1); threads_used counts the threads it started"

# TFLite tensor dtype (numpy) -> torch dtype name (what the runner makes inputs of ones from)
_DTYPES = {"float32": "float32", "float16": "float16", "float64": "float64", "int64": "int64", "int32": "int32",
           "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool"}


def import_runtime() -> str:
    """Import the LiteRT interpreter (before the runner's memory baseline); ai-edge-litert's version."""
    import ai_edge_litert
    from ai_edge_litert import interpreter  # noqa: F401

    return str(ai_edge_litert.__version__)


def library_path() -> Optional[str]:
    """The native library that runs the model, as this process mapped it: the interpreter wrapper's
    stub links ``libpywrap_litert_common.so`` (the interpreter and XNNPACK)."""
    import ai_edge_litert

    return build_info.loaded_library((LIBRARY.removesuffix(".so"),), list(ai_edge_litert.__path__))


def _thread_count() -> Optional[int]:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def load(path: str, method: str, threads: int) -> Loaded:
    """The interpreter with tensors allocated; input specs from its input details."""
    import numpy as np
    import torch
    from ai_edge_litert.interpreter import Interpreter

    if method != "forward":
        raise Unsupported(f"a .tflite has one signature here; --method {method!r} is for .pte/.ptl")
    before = _thread_count()
    try:
        interp = Interpreter(model_path=path, num_threads=threads or None)
        interp.allocate_tensors()  # XNNPACK's pool is made here, before anything is timed
    except Exception as exc:  # noqa: BLE001  (ValueError, RuntimeError: the wrapper's own messages)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadError(f"cannot load {path} with LiteRT: {first}") from None
    after = _thread_count()
    # no public API says which delegate took which node; the node list (private, but stable since TF 2.x)
    # ends in a DELEGATE node for each delegated partition
    if not any(op.get("op_name") == "DELEGATE" for op in interp._get_ops_details()):
        raise Unsupported(f"LiteRT applied no XNNPACK delegate to {path}: its operators would run on builtin "
                          "kernels, not the artifact's backend (xnnpack)")
    inputs = interp.get_input_details()  # the subgraph's order: litert_torch writes the torch signature's
    outputs = interp.get_output_details()
    specs = []
    for d in inputs:
        dtype = np.dtype(d["dtype"]).name
        if dtype not in _DTYPES or any(int(s) < 0 for s in d["shape_signature"]):
            specs = []
            break
        specs.append((_DTYPES[dtype], tuple(int(s) for s in d["shape"])))

    def run(tensors: list) -> list:
        if len(tensors) != len(inputs):
            raise ValueError(f"the model takes {len(inputs)} inputs, {len(tensors)} were given")
        for d, t in zip(inputs, tensors):
            interp.set_tensor(d["index"], t.detach().contiguous().numpy())
        interp.invoke()
        return [torch.from_numpy(interp.get_tensor(d["index"])) for d in outputs]  # get_tensor copies

    if before is not None and after is not None:
        return Loaded(run, specs, 1 + max(after - before, 0), None if threads else THREADS_DEFAULT)
    return Loaded(run, specs, threads or None, None if threads else THREADS_UNKNOWN)
