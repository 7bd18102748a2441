"""The runtimes the Python runner can run, one module per runtime, chosen by the model file's suffix.

Each backend module has the same small interface:

- ``RUNTIME``: the name in the record's ``runner.runtime``;
- ``import_runtime() -> version``: import the runtime (before the runner's memory baseline, so the
  baseline is the runner's own: interpreter + runtime) and return its version; ``ImportError`` when
  it is not installed;
- ``load(path, method, threads) -> Loaded``: the model ready to run; ``LoadError`` when the file is
  not one this runtime can load, ``Unsupported`` for a request it cannot honour (another method);
- ``library_path() -> Optional[str]`` (optional): the runtime's main native library, whose ``.comment``
  compilers the record's ``runner.build`` names (``build_info``; a backend without it: null, with the reason).

Inputs and outputs cross as torch tensors, so the vectors and the output check are the runner's,
the same for every runtime.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional


class LoadError(Exception):
    """The file is not a model this runtime can load (the runner's ``load_failed``)."""


class Unsupported(Exception):
    """A request this runtime cannot honour (the runner's ``unsupported``)."""


@dataclass(frozen=True)
class Loaded:
    """A loaded model: ``run(inputs) -> outputs`` (torch tensors), the input specs to make inputs of
    ones from (empty: unknown), and the threads it runs on (None, with ``threads_note``, when the
    runtime chose and does not say)."""

    run: Callable[[list], list]
    input_specs: list[tuple[str, tuple[int, ...]]]
    threads_used: Optional[int]
    threads_note: Optional[str] = None


@dataclass(frozen=True)
class Backend:
    suffix: str  # the model file's name ends with it
    module: str  # edgeprobe_runner.backends.<module>
    runtime: str  # runner.runtime in the record
    distribution: str  # the package whose version a usage record names
    install: str  # what to run when the runtime is missing


# Longest suffixes first where one ends another (none do today).
BACKENDS: tuple[Backend, ...] = (
    Backend(".pte", "executorch", "executorch", "executorch", "pip install executorch"),
    Backend(".ptl", "torchscript_lite", "torchscript_lite", "torch", "pip install torch"),
    Backend(".onnx", "onnxruntime", "onnxruntime", "onnxruntime", "pip install edgeprobe[onnx]"),
    Backend(".ov.tar", "openvino", "openvino", "openvino", "pip install edgeprobe[openvino]"),
    Backend(".ncnn.tar", "ncnn", "ncnn", "ncnn", "pip install edgeprobe[ncnn]"),
    Backend(".tflite", "litert", "litert", "ai-edge-litert", "pip install edgeprobe[litert]"),
)


def for_path(path: str) -> Backend:
    """The backend for a model file (a .pte when no suffix matches: the native runner's own format)."""
    for b in BACKENDS:
        if path.endswith(b.suffix):
            return b
    return BACKENDS[0]


def module(backend: Backend) -> ModuleType:
    return importlib.import_module(f"edgeprobe_runner.backends.{backend.module}")
