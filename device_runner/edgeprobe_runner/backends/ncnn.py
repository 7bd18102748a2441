"""ncnn for the Python runner: a `.ncnn.tar` (the .ncnn.param, .ncnn.bin and io.json pnnx's lowering
wrote) on ``ncnn.Net``, CPU, fp32.

fp32 is forced: ncnn's options default to fp16 packed/storage/arithmetic (used on CPUs with F16C or
ARMv8.2 fp16) and the artifact is fp32, so every reduced-precision option is switched off and Vulkan
too. Threads: ``--threads N`` sets ``opt.num_threads = N``; ``--threads 0`` keeps ncnn's default
(what a fresh ``ncnn.Option`` holds: its count of the CPU's cores, big cores on big.LITTLE);
``threads_used`` is what the net's options say after loading, the count its OpenMP loops run with. One extractor per inference
(ncnn's extractor caches intermediate blobs, so reusing one would return a cached output). ncnn's Mat
has no batch dimension: inputs go in without it (batch 1 only) and each output gets its full shape
back from io.json, so the runner's shape check stays strict.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from typing import Optional

from edgeprobe_runner.backends import Loaded, LoadError, Unsupported

RUNTIME = "ncnn"
PARAM_NAME, BIN_NAME, IO_NAME = "model.ncnn.param", "model.ncnn.bin", "io.json"  # as lower/ncnn.py writes them
# options that would make ncnn store or compute in 16 bits (those this version has are switched off)
_REDUCED_PRECISION = ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_packed",
                      "use_bf16_storage", "use_weight_fp16_storage")


def import_runtime() -> str:
    """Import ncnn (before the runner's memory baseline); its version."""
    import ncnn

    return str(ncnn.__version__)


def library_path() -> Optional[str]:
    """The native library that runs the model: the wheel links libncnn statically into its extension module."""
    try:
        import ncnn.ncnn as ext
    except ImportError:
        return None
    return getattr(ext, "__file__", None)


def _members(path: str) -> tuple[str, bytes, dict]:
    """(param text, bin bytes, io.json's inputs and outputs) from the tar; LoadError for anything else."""
    try:
        with tarfile.open(path, "r:") as tar:
            got = {}
            for name in (PARAM_NAME, BIN_NAME, IO_NAME):
                f = tar.extractfile(name)
                if f is None:
                    raise KeyError(name)
                got[name] = f.read()
        raw = json.loads(got[IO_NAME])
        meta = {side: [{"name": str(t["name"]), "dtype": str(t["dtype"]), "shape": tuple(int(d) for d in t["shape"])}
                       for t in raw[side]] for side in ("inputs", "outputs")}
        return got[PARAM_NAME].decode(), got[BIN_NAME], meta
    except (tarfile.TarError, KeyError, OSError, EOFError, ValueError, TypeError, UnicodeDecodeError) as exc:
        why = f"{type(exc).__name__}: {exc}".strip()
        raise LoadError(f"cannot load {path} with ncnn: not a complete edgeprobe ncnn artifact ({why[:200]})") from None


def load(path: str, method: str, threads: int) -> Loaded:
    """The net, fp32 on the CPU, with the input specs from io.json and the threads its options hold."""
    import ncnn
    import numpy as np
    import torch

    if method != "forward":
        raise Unsupported(f"a .ncnn.tar has one graph; --method {method!r} is for .pte/.ptl")
    param, weights, meta = _members(path)
    inputs_meta, outputs_meta = meta["inputs"], meta["outputs"]
    for t in inputs_meta:
        if not t["shape"] or t["shape"][0] != 1:
            raise Unsupported(f"input {t['name']} has shape {tuple(t['shape'])}: ncnn's Mat has no batch dimension, "
                              "so this runner runs batch 1 only; lower the model with a batch of 1")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    for name in _REDUCED_PRECISION:
        if hasattr(net.opt, name):
            setattr(net.opt, name, False)
    if threads:
        net.opt.num_threads = threads
    if net.load_param_mem(param) != 0:
        raise LoadError(f"cannot load {path} with ncnn: ncnn refused its .param (see the runner's stderr)")
    # The weights go through a file, not load_model_mem: ncnn's reader from memory takes a bare pointer
    # (no length, so a damaged .bin is read past its end) and keeps pointers into it for fp32 weights
    # (the bytes Python passed would be freed under the net). Its file reader reports a short read.
    with tempfile.TemporaryDirectory(prefix="edgeprobe-ncnn-") as tmp:
        bin_path = os.path.join(tmp, BIN_NAME)
        with open(bin_path, "wb") as f:
            f.write(weights)
        if net.load_model(bin_path) != 0:
            raise LoadError(f"cannot load {path} with ncnn: its .bin is shorter than its .param needs "
                            "(truncated or from another model)")
    in_names = [t["name"] for t in inputs_meta]
    out_meta = [(t["name"], t["shape"]) for t in outputs_meta]

    def run(inputs: list) -> list:
        if len(inputs) != len(in_names):
            raise ValueError(f"the model takes {len(in_names)} inputs, {len(inputs)} were given")
        ex = net.create_extractor()
        arrays = [t.detach().to(torch.float32).contiguous().numpy()[0] for t in inputs]  # alive while ex runs
        for name, a in zip(in_names, arrays):
            if ex.input(name, ncnn.Mat(a)) != 0:
                raise RuntimeError(f"ncnn refused input {name}")
        outs = []
        for name, shape in out_meta:
            ret, mat = ex.extract(name)
            if ret != 0:
                raise RuntimeError(f"ncnn could not compute output {name} (extract returned {ret})")
            y = np.asarray(mat)  # a view of the Mat (extract returns its own clone); copied only where strided
            if y.dtype != np.float32 or y.size != int(np.prod(shape)):
                raise RuntimeError(f"ncnn's output {name} is {y.dtype} {y.shape}, the model's is float32 {shape}")
            outs.append(torch.from_numpy(np.ascontiguousarray(y).reshape(shape)))
        return outs

    specs = [(t["dtype"], t["shape"]) for t in inputs_meta]
    used = int(net.opt.num_threads)
    if ncnn.get_omp_dynamic():  # OMP_DYNAMIC: OpenMP may give ncnn's loops fewer threads, and does not say
        return Loaded(run, specs, None, f"OpenMP dynamic adjustment is on (OMP_DYNAMIC): ncnn asks for {used} "
                                        "threads a loop, OpenMP may run it on fewer and does not report how many")
    limit = os.environ.get("OMP_THREAD_LIMIT", "")
    if limit.isdigit() and 0 < int(limit) < used:  # OpenMP caps every team at the limit
        return Loaded(run, specs, int(limit), f"OMP_THREAD_LIMIT={limit} caps ncnn's {used} threads")
    return Loaded(run, specs, used, None)
