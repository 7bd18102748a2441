"""ExecuTorch for the Python runner: a `.pte` through ``executorch.runtime`` (where the native runner
is not built). ``--threads N`` resets the bindings' thread pool to N; 0 keeps its default, which
the bindings report."""

from __future__ import annotations

import os
from typing import Any, Optional

from edgeprobe_runner import build_info
from edgeprobe_runner import vectors as epv
from edgeprobe_runner.backends import Loaded, LoadError, Unsupported

RUNTIME = "executorch"

# Set by the runner's main(): this process is the runner itself (``python -m edgeprobe_runner``),
# not a library caller that may import the EXIR compiler afterwards.
own_process = False


def import_runtime() -> str:
    if own_process:
        # the runtime bindings without the EXIR compiler (about 3.5 s of a 4.5 s start-up on 2 cores);
        # only in the runner's own process, which never imports exir afterwards (split_client._portable_lib)
        from edgeprobe_runner.split_client import _portable_lib

        _portable_lib()
    import executorch.runtime  # noqa: F401

    return version() or "unknown"


def version() -> Optional[str]:
    """The wheel's own version string (``executorch.version``, with its local tag such as ``+cpu``): the
    one the native runner is built with (EDGEPROBE_EXECUTORCH_VERSION), so both flavors name a runtime alike."""
    from importlib import metadata

    try:
        from executorch.version import __version__

        return str(__version__)
    except ImportError:
        try:
            return metadata.version("executorch")
        except metadata.PackageNotFoundError:
            return None


def library_path() -> Optional[str]:
    """The XNNPACK delegate's library (``libexecutorch_backend_xnnpack.so``, which the bindings' ``_C`` links):
    the micro-kernels of every .pte lowered for XNNPACK run there, so its compilers are the build's that matters."""
    import executorch

    return build_info.loaded_library(("libexecutorch_backend_xnnpack",),
                                     [os.path.join(d, "lib") for d in executorch.__path__])


def default_threads() -> int:
    """The bindings' thread pool before a load, as the native runner reports it."""
    from executorch.extension.pybindings import portable_lib

    return int(portable_lib._threadpool_get_thread_count())


def load(path: str, method: str, threads: int) -> Loaded:
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    if threads:
        portable_lib._unsafe_reset_threadpool(threads)
    try:
        program = Runtime.get().load_program(path)
        loaded = program.load_method(method)
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"cannot load {path} method {method!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if loaded is None:
        raise LoadError(f"{path} has no method {method!r}")
    meta = loaded.metadata
    specs = []
    for i in range(meta.num_inputs()):
        tm = meta.input_tensor_meta(i)
        specs.append((dtype_name(tm.dtype()), tuple(tm.sizes())))

    def run(inputs: list) -> list:
        return list(loaded.execute(inputs))

    return Loaded(run, specs, default_threads())


def dtype_name(dtype: Any) -> str:
    """An ExecuTorch ScalarType (its code, as the bindings give it, or its name: Float, Long, ...) -> the
    torch dtype name."""
    code = dtype if isinstance(dtype, int) else getattr(dtype, "value", None)
    if isinstance(code, int):
        if code not in epv.CODE_DTYPES:
            raise Unsupported(f"input dtype code {code} is not one the runner can make inputs of ones for")
        return epv.CODE_DTYPES[code]
    name = str(dtype).removeprefix("ScalarType.")
    if name.isdigit():
        return dtype_name(int(name))
    return {"Float": "float32", "Double": "float64", "Half": "float16", "BFloat16": "bfloat16", "Long": "int64",
            "Int": "int32", "Short": "int16", "Char": "int8", "Byte": "uint8", "Bool": "bool"}.get(name, name.lower())
