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


def _native_binary() -> Optional[Path]:
    from edgeprobe.native import find_native_runner

    try:
        path = find_native_runner()
    except Exception:  # noqa: BLE001  (a half-installed bundle reads as not built)
        return None
    return Path(path) if path and Path(path).is_file() and os.access(path, os.X_OK) else None


def require_native() -> Path:
    """The native runner binary; skip (pytest.fail under CI=true) when it is not built."""
    binary = _native_binary()
    if binary is None:
        reason = "the native runner is not built (run `edgeprobe runner build`)"
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
