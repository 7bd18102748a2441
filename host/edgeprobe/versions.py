"""Tool versions recorded with every artifact and result (importlib.metadata: no heavy imports)."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

__version__ = "0.1.0"


@functools.lru_cache(maxsize=None)
def tool_versions() -> dict[str, str]:
    out = {"edgeprobe": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "executorch", "torchao"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
