"""TorchScript-Lite for the Python runner: a `.ptl` on torch's lite interpreter. It keeps no input
metadata, so a run without vectors is refused by the runner; ``--threads N`` sets torch's intra-op pool."""

from __future__ import annotations

import os
from typing import Optional

from edgeprobe_runner import build_info
from edgeprobe_runner.backends import Loaded, LoadError

RUNTIME = "torchscript_lite"


def import_runtime() -> str:
    from importlib import metadata

    import torch  # noqa: F401
    import torch.jit.mobile  # noqa: F401

    return metadata.version("torch")


def library_path() -> Optional[str]:
    """torch's ``libtorch_cpu.so``: the lite interpreter and its CPU kernels live there."""
    import torch

    return build_info.loaded_library(("libtorch_cpu",), [os.path.join(d, "lib") for d in torch.__path__])


def load(path: str, method: str, threads: int) -> Loaded:
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        m = torch.jit.mobile._load_for_lite_interpreter(path)
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"cannot load {path} as TorchScript-Lite: {str(exc).splitlines()[0]}")
    fn = getattr(m, method) if method != "forward" else m

    def run(inputs: list) -> list:
        out = fn(*inputs)
        if isinstance(out, torch.Tensor):
            return [out]
        return list(out)

    return Loaded(run, [], torch.get_num_threads())
