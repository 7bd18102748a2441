"""Fixtures of the runner conformance suite: both runners (PROTOCOL.md's one contract), the cases.

The native runner is the one already built (``edgeprobe.native.find_native_runner``; build it with
``edgeprobe runner build``). Where it is missing its half of every case skips with the reason, except
under ``CI=true`` (as for ``real_peer`` tests in ``tests/conftest.py``): there a missing native runner
fails, so a CI run cannot pass with half of the contract unchecked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

RUNNERS = ("native", "python")


def ci_enabled() -> bool:
    """CI=true (or 1/yes): the policy of tests/conftest.py's ``ci_enabled``."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _find_native() -> tuple[Optional[Path], str]:
    """(the native runner binary, "") or (None, why not)."""
    from edgeprobe.native import find_native_runner

    try:
        path = Path(find_native_runner())
    except Exception as exc:  # noqa: BLE001  (not built, or a bundle that fails its manifest check)
        return None, " ".join(str(exc).split()) or type(exc).__name__
    if not (path.is_file() and os.access(path, os.X_OK)):
        return None, f"{path} is not an executable"
    return path, ""


def _native_binary() -> Optional[Path]:
    return _find_native()[0]


def require_native() -> Path:
    """The native runner binary; skip (pytest.fail under CI=true) when it is not built."""
    binary, why = _find_native()
    if binary is None:
        reason = f"the native runner is not built (`edgeprobe runner build`): {why}"
        if ci_enabled():
            pytest.fail(f"CI=true: {reason}; the conformance suite must run both runners")
        pytest.skip(reason)
    return binary


def runner_argv(runner: str) -> list[str]:
    if runner == "native":
        return [str(require_native())]
    return [sys.executable, "-m", "edgeprobe_runner"]


def clean_env() -> dict[str, str]:
    """The test's environment without tokens and without a fake sysfs or fault injection."""
    drop = ("EDGEPROBE_TOKEN", "EDGEPROBE_SERVE_TOKEN", "EDGEPROBE_SPLIT_TOKEN", "EDGEPROBE_SYSFS_ROOT",
            "EDGEPROBE_RUNNER_FAULT")
    return {k: v for k, v in os.environ.items() if k not in drop}


def run_runner(runner: str, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*runner_argv(runner), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=clean_env())
