"""Start-up cost: the commands that need no model (``--help``, ``devices``, ``show RECORD``,
``recipes``) import neither torch nor executorch, checked in a fresh interpreter at exit; and the
recipe list they print without torch is the one the recipe modules register."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "executorch")
# `python -m edgeprobe ARGS`, reporting at exit which heavy packages were imported
PROBE = """
import atexit, runpy, sys
def _report():
    heavy = sorted({m.split('.')[0] for m in sys.modules} & set(%r))
    sys.stderr.write('\\nHEAVY-IMPORTS: ' + (','.join(heavy) or 'none') + '\\n')
atexit.register(_report)
sys.argv = ['edgeprobe', *sys.argv[1:]]
runpy.run_module('edgeprobe', run_name='__main__', alter_sys=True)
""" % (HEAVY,)


def _heavy_imports(*args: str) -> tuple[str, subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEPROBE_ADB_ADDRESSES", "EDGEPROBE_DEBUG")}
    env["EDGEPROBE_ZEROCONF_INTERFACES"] = "127.0.0.1"  # a 2 s browse on loopback, not every interface
    env["COLUMNS"] = "120"
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=120)
    lines = [x for x in p.stderr.splitlines() if x.startswith("HEAVY-IMPORTS: ")]
    assert lines, f"edgeprobe {' '.join(args)} did not reach exit ({p.returncode}): {p.stderr[-2000:]}"
    return lines[-1].split(": ", 1)[1], p


@pytest.fixture(scope="module")
def record_path(tiny_pte, native_runner, tmp_path_factory):
    from edgeprobe.api import bench

    r = bench(tiny_pte, iterations=3, warmup=1)
    assert r.ok, r.run.error
    return r.save(tmp_path_factory.mktemp("record") / "result.json")


@pytest.mark.parametrize("args", [("--help",), ("devices", "--no-usb"), ("show", "RECORD"), ("recipes",)],
                         ids=["help", "devices", "show", "recipes"])
def test_commands_without_a_model_import_no_torch(args, request):
    if "RECORD" in args:
        args = tuple(str(request.getfixturevalue("record_path")) if a == "RECORD" else a for a in args)
    heavy, p = _heavy_imports(*args)
    assert p.returncode == 0, p.stderr[-2000:]
    assert heavy == "none", f"edgeprobe {' '.join(args)} imported {heavy}"
    assert p.stdout.strip()  # it did print something


def test_the_recipe_catalog_is_what_the_modules_register():
    """``edgeprobe recipes`` lists CATALOG without importing the recipe modules: it must say what they register."""
    from edgeprobe import compress

    compress._load_all()
    assert set(compress.CATALOG) == set(compress.RECIPES)  # RECIPES fills in module import order
    for name, registered in compress.RECIPES.items():
        listed = compress.CATALOG[name]
        assert (listed.usage(), listed.kind, listed.positional) == (registered.usage(), registered.kind,
                                                                    registered.positional), name
