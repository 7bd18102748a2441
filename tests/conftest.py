"""Shared fixtures: an isolated artifact cache, the real native runner (built once if missing)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("artifact-cache")
    os.environ["EDGEPROBE_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def native_runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed native runner; built into a temp dir when this machine has none yet."""
    from edgeprobe.errors import RunnerNotBuiltError
    from edgeprobe.native import build_native_runner, find_native_runner

    try:
        return find_native_runner()
    except RunnerNotBuiltError:
        dest = tmp_path_factory.mktemp("runner")
        path = build_native_runner(dest, log=lambda _m: None)
        os.environ["EDGEPROBE_NATIVE_RUNNER"] = str(path)
        return path


@pytest.fixture(scope="session")
def tiny_pte(isolated_cache):
    from edgeprobe.api import export

    return export("tiny_cnn")


@pytest.fixture(scope="session")
def tiny_portable_pte(isolated_cache):
    from edgeprobe.api import export

    return export("tiny_cnn", backend="portable")
