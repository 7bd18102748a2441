"""The package's shape, checked: every module says what it is for, stays small or says why, the
arrows point down (no sub-package calls ``edgeprobe.api``, the device side never imports the host),
and the start-up commands stay torch-free (tests/test_import_cost.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOST = REPO / "host" / "edgeprobe"
DEVICE = REPO / "device_runner" / "edgeprobe_runner"
MAX_LINES = 400
LONG_REASON = "Longer than 400 lines because"  # the phrase a long module's docstring must carry


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth (function-level imports count too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("path", _modules(HOST) + _modules(DEVICE), ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_says_what_it_is_for_and_stays_small(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and doc.strip(), f"{path.relative_to(REPO)} has no module docstring saying what it is for"
    n = len(path.read_text().splitlines())
    if path.is_relative_to(HOST) and n > MAX_LINES:
        assert LONG_REASON in doc, (f"{path.relative_to(REPO)} has {n} lines; cut it along its seams or say why in "
                                    f"its docstring ('{LONG_REASON} ...')")


def test_no_sub_package_calls_the_top_level_api():
    offenders = []
    for path in _modules(HOST):
        rel = path.relative_to(HOST)
        if len(rel.parts) < 2:  # top-level modules (api, cli helpers, session) may
            continue
        if rel.parts[0] == "cli":  # the CLI is the API's one consumer inside the package
            continue
        names = _imports(path)
        if "edgeprobe.api" in names:
            offenders.append(str(rel))
    assert not offenders, f"sub-packages importing edgeprobe.api: {offenders}"


def test_the_device_side_never_imports_the_host():
    offenders = {str(p.relative_to(REPO)): sorted(n for n in _imports(p) if n == "edgeprobe" or n.startswith("edgeprobe."))
                 for p in _modules(DEVICE)}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, offenders


def test_the_session_is_the_one_measurement_path():
    """Only the session (and its helpers) drive a runner: nobody else builds runner argv or runs
    one through a transport, so that every measurement gets the same hygiene, retries and record."""
    users = [str(p.relative_to(HOST)) for p in _modules(HOST)
             if "edgeprobe.session._measure" in _imports(p) or "_run_with_retry" in p.read_text()]
    assert users == ["session.py"], users
