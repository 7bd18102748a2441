"""LiteRT target: the model's ExportedProgram -> ``litert_torch.convert(...).export(...)`` -> .tflite,
converted in a separate python (the converter environment).

litert-torch cannot be installed into edgeprobe's environment: beside torch 2.14.1 it resolves only
without the project's constraints, pins typing_extensions 4.12.2 and pulls in jax, transformers
and kagglehub. So the conversion runs in a venv of its own, found through ``EDGEPROBE_LITERT_PYTHON``
(else ``CONVERTER_ENV`` under the user cache, where ``.ci/litert-env.sh`` makes it by default). The
program (``spec.program()``, the graph the cache key hashes) crosses by ``torch.export.save``, the
example inputs by ``torch.save``; ``litert_convert.py`` runs there under a timeout and its console
chatter is captured (a ``--json`` stdout stays JSON). Without a converter environment the
capability row says how to make one; a .tflite artifact made elsewhere can still be benched (the
runtime, ai-edge-litert, is in edgeprobe's environment).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from edgeprobe.errors import LoweringError
from edgeprobe.fsutil import _fault_point
from edgeprobe.lower import Lowered, translate_export_error
from edgeprobe.models import ModelSpec

FILE_NAME = "model.tflite"
ENV_VAR = "EDGEPROBE_LITERT_PYTHON"
CONVERTER_ENV = "litert-env"  # under platformdirs' user cache dir for edgeprobe (~/.cache/edgeprobe on Linux)
CONVERT_TIMEOUT_S = 900.0
VERSIONS_TIMEOUT_S = 60.0
SCRIPT = Path(__file__).with_name("litert_convert.py")
RECIPES: frozenset[str] = frozenset()
MAKE_ENV = ("bash .ci/litert-env.sh [ENV] from an edgeprobe checkout with its venv active (torch linked from it, "
            "1.4 GB; ENV defaults to the place edgeprobe looks), or python -m venv ENV && ENV/bin/pip install "
            "litert-torch==0.10.0 torch=={torch}; then export " + ENV_VAR + "=ENV/bin/python")


def _make_env() -> str:
    """What to run to make a converter environment: its torch must be this one (the .pt2 crosses over)."""
    from importlib import metadata

    return MAKE_ENV.format(torch=metadata.version("torch").split("+")[0])


def default_python() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("edgeprobe")) / CONVERTER_ENV / "bin" / "python"


def converter_python() -> Optional[str]:
    """The converter environment's python: ``EDGEPROBE_LITERT_PYTHON``, else the default place if it exists."""
    given = os.environ.get(ENV_VAR)
    if given:
        return given
    default = default_python()
    return str(default) if default.exists() else None


def converter_missing() -> Optional[str]:
    """Why --format tflite cannot be lowered here (the capability row's reason), or None."""
    given = os.environ.get(ENV_VAR)
    if given and not (os.path.isfile(given) and os.access(given, os.X_OK)):
        return f"{ENV_VAR}={given} is not an executable python; make the LiteRT converter environment: {_make_env()}"
    python = converter_python()
    if python is None:
        return (f"no LiteRT converter environment ({ENV_VAR} is unset and {default_python()} does not exist); "
                f"make one: {_make_env()}")
    there = dict(_versions_of(python))
    if "torch" in there and there["torch"] in (None, "not installed"):  # read, and no torch: dangling links
        return (f"the LiteRT converter environment {python} cannot import torch (it links the torch of the "
                f"project venv it was made from, which has moved or been deleted); make it again: {_make_env()}")
    return None


@functools.lru_cache(maxsize=8)
def _versions_of(python: str) -> tuple[tuple[str, str], ...]:
    try:
        p = subprocess.run([python, "-I", str(SCRIPT), "--versions"], capture_output=True, text=True,
                           timeout=VERSIONS_TIMEOUT_S)
        return tuple(sorted(json.loads(p.stdout.strip().splitlines()[-1]).items()))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return (("litert-torch", f"unreadable from {python}"),)


def converter_versions() -> dict[str, str]:
    """The converter environment's litert-torch, litert-converter, ai-edge-litert and torch (cache key,
    manifest), prefixed ``converter:`` so they do not read as this environment's packages."""
    python = converter_python()
    if python is None:
        return {"converter:litert-torch": "no converter environment"}
    return {f"converter:{k}": v for k, v in _versions_of(python)}


def _torch_differs() -> str:
    """A hint for a failed conversion: the .pt2 is written by this torch and read by the converter's."""
    from importlib import metadata

    here = metadata.version("torch").split("+")[0]
    there = str(converter_versions().get("converter:torch") or "?").split("+")[0]  # null: not importable there
    return "" if there == here else f" (the converter environment has torch {there}, this one {here})"


def lower(spec: ModelSpec, backend: str, out_dir: Path, notes: list[str]) -> Lowered:
    import torch

    why = converter_missing()
    if why:
        raise LoweringError(why)
    python = converter_python()
    assert python is not None
    try:
        program = spec.program()
    except Exception as exc:  # noqa: BLE001
        raise translate_export_error(spec, exc) from exc
    with tempfile.TemporaryDirectory(prefix="edgeprobe-litert-") as tmp:
        work = Path(tmp)
        torch.export.save(program, str(work / "program.pt2"))
        torch.save(tuple(t.detach().cpu() for t in spec.example_inputs), str(work / "inputs.pt"))
        args = [python, "-I", str(SCRIPT), str(work / "program.pt2"), str(work / "inputs.pt"),
                str(out_dir / FILE_NAME), str(work / "result.json")]
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise LoweringError(f"lowering {spec.ref} to tflite: the LiteRT converter ({python}) did not finish "
                                f"within {CONVERT_TIMEOUT_S:.0f} s") from None
        except OSError as exc:
            raise LoweringError(f"cannot start the LiteRT converter {python}: {exc}; {_make_env()}") from None
        try:
            result = json.loads((work / "result.json").read_text())
        except (OSError, ValueError):
            said = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
            raise LoweringError(f"lowering {spec.ref} failed: the LiteRT converter ({python}) exited "
                                f"{p.returncode} without a result: {said[-1][:500] if said else 'it said nothing'}"
                                ) from None
    if not result.get("ok"):
        raise LoweringError(f"lowering {spec.ref} failed in litert_torch.convert "
                            f"({result.get('error_type')}): {result.get('error')}{_torch_differs()}")
    if not (out_dir / FILE_NAME).is_file():
        raise LoweringError(f"lowering {spec.ref}: the LiteRT converter reported success but wrote no {FILE_NAME}")
    v = result.get("versions", {})
    notes.append(f"litert_torch.convert {v.get('litert-torch', '?')} (litert-converter {v.get('litert-converter', '?')}, "
                 f"torch {v.get('torch', '?')}) in the converter environment {python}")
    _fault_point("lower:model-written")
    return Lowered(FILE_NAME)
