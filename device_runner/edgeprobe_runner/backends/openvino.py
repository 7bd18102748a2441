"""OpenVINO for the Python runner: a `.ov.tar` (the IR's ``model.xml`` and ``model.bin`` in one
uncompressed tar, so the artifact is one file to push and hash) compiled on the ``CPU`` device.

The two members are read into memory and given to ``Core.read_model(xml, Tensor(weights))``: no
temporary files on the device; the Tensor shares the buffer read from the tar (no second copy),
and the CPU plugin's repacked weights come on top, as the runner's peak memory shows.

Compile options (``compile_config``): ``INFERENCE_PRECISION_HINT`` f32, because on a CPU with bf16
(AVX512_BF16, AMX) or fp16 support OpenVINO otherwise lowers fp32 layers to bf16/fp16 without a
word, and the record says fp32; one stream and the latency hint (one request at a time, as every
runtime here runs); ``INFERENCE_NUM_THREADS`` = ``--threads`` when > 0. An NNCF int8 model keeps
its quantized layers in int8 (the hint is for the layers left in floating point). ``threads_used``
is read back from the compiled model (``INFERENCE_NUM_THREADS``), which for ``--threads 0`` is the
number of threads OpenVINO chose (its physical cores in this process's affinity); that it is the
number of threads really running is checked in tests/test_openvino.py (busy threads in /proc).
"""

from __future__ import annotations

import os
import tarfile
from typing import Any, Optional

from edgeprobe_runner import build_info
from edgeprobe_runner.backends import Loaded, LoadError, Unsupported

RUNTIME = "openvino"
XML_MEMBER = "model.xml"
BIN_MEMBER = "model.bin"
DEVICE = "CPU"

# OpenVINO element type -> torch dtype name (what the runner makes inputs of ones from)
_OV_DTYPES = {"f32": "float32", "f64": "float64", "f16": "float16", "bf16": "bfloat16", "i64": "int64",
              "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8", "boolean": "bool"}


def import_runtime() -> str:
    """Import openvino (before the runner's memory baseline); its version as the wheel names it (the
    one the usage record and the artifact's tool_versions name; ``openvino.get_version()`` adds the build)."""
    from importlib import metadata

    import openvino

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return str(openvino.get_version())


def library_path() -> Optional[str]:
    """OpenVINO's core library (``libopenvino.so.*``) as this process mapped it (the CPU plugin, which
    holds the kernels, is mapped only once a model is compiled; in the 2026.4 wheel both name the same
    compiler in their .comment)."""
    import openvino

    libs = [os.path.join(d, "libs") for d in openvino.__path__]
    return build_info.loaded_library(("libopenvino.so",), libs)


def compile_config(threads: int) -> dict[str, Any]:
    """The CPU plugin's properties for a run on ``threads`` threads (0: OpenVINO's default)."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def read_members(path: str) -> tuple[bytearray, bytearray]:
    """``model.xml`` and ``model.bin`` from the tar, into (writable) memory; LoadError for anything else."""
    try:
        with tarfile.open(path, "r:") as tar:  # "r:": uncompressed only, as lowering writes it
            out = {}
            for name in (XML_MEMBER, BIN_MEMBER):
                try:
                    member = tar.getmember(name)
                except KeyError:
                    raise LoadError(f"cannot load {path} with openvino: the tar has no {name} "
                                    "(not an OpenVINO artifact .ov.tar)") from None
                f = tar.extractfile(member) if member.isfile() else None
                if f is None:
                    raise LoadError(f"cannot load {path} with openvino: {name} is not a regular file in the tar")
                out[name] = bytearray(member.size)
                got = f.readinto(out[name])
                if got != member.size:
                    raise LoadError(f"cannot load {path} with openvino: {name} is truncated ({got} of {member.size} bytes)")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise LoadError(f"cannot load {path} with openvino: not a readable tar ({exc})") from None
    return out[XML_MEMBER], out[BIN_MEMBER]


def compile_file(path: str, threads: int) -> tuple[Any, bytearray]:
    """The compiled model of a `.ov.tar` (``openvino.CompiledModel``) and the weights buffer it may
    share (keep it alive as long as the model); LoadError when OpenVINO refuses the file."""
    import numpy as np
    import openvino as ov

    xml, weights = read_members(path)
    core = ov.Core()
    try:
        text = xml.decode("utf-8")
        if weights:  # shared_memory: the Tensor is the buffer read from the tar, not a second copy
            model = core.read_model(text, ov.Tensor(np.frombuffer(weights, dtype=np.uint8), shared_memory=True))
        else:  # a model without constants: the bytes overload (a Tensor of no bytes is refused)
            model = core.read_model(bytes(xml), b"")
        return core.compile_model(model, DEVICE, compile_config(threads)), weights
    except (RuntimeError, UnicodeDecodeError, ValueError) as exc:  # openvino raises RuntimeError for a bad IR
        said = str(exc).strip().splitlines()
        raise LoadError(f"cannot load {path} with openvino: {said[-1] if said else type(exc).__name__}") from None


def load(path: str, method: str, threads: int) -> Loaded:
    """The compiled model and one infer request; input specs empty when a dimension is dynamic."""
    import numpy as np
    import torch

    if method != "forward":
        raise Unsupported(f"an OpenVINO model has one graph; --method {method!r} is for .pte/.ptl")
    compiled, weights = compile_file(path, threads)
    request = compiled.create_infer_request()
    specs = []
    for port in compiled.inputs:
        shape = port.get_partial_shape()
        kind = port.get_element_type().get_type_name()
        if not shape.is_static or kind not in _OV_DTYPES:
            specs = []
            break
        specs.append((_OV_DTYPES[kind], tuple(int(d) for d in shape.to_shape())))
    n_inputs = len(compiled.inputs)

    def run(inputs: list, _weights: bytearray = weights) -> list:  # _weights: alive while run is
        if len(inputs) != n_inputs:
            raise ValueError(f"the model takes {n_inputs} inputs, {len(inputs)} were given")
        feed = [t.detach().contiguous().numpy() for t in inputs]
        # share_inputs: the numpy views are the input tensors (no copy); outputs are copied out of the
        # request, whose buffers the next inference overwrites
        result = request.infer(feed, share_inputs=True, share_outputs=False)
        return [torch.from_numpy(np.ascontiguousarray(result[port])) for port in compiled.outputs]

    threads_used = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    return Loaded(run, specs, threads_used, None)
