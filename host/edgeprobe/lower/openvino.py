"""OpenVINO target: the model's ExportedProgram -> ``openvino.convert_model`` -> IR in one `.ov.tar`.

The graph converted is ``spec.program()``, the one export the cache key hashes and the other
targets lower, with the example inputs' shapes made static (``input=``: converted from an
ExportedProgram the IR's dimensions are otherwise dynamic, and the runner makes its inputs from
static shapes). ``model.xml`` and ``model.bin``, as ``ov.save_model(compress_to_fp16=False)``
writes them (fp32 weights: the artifact is the model that was asked for), go into one uncompressed
tar, so the artifact is one file that the device path pushes and checks by sha256. Its members
carry no time or owner of this host (OpenVINO's generated layer names count up within a process,
so the same model lowered twice in one process still differs in those names).

``int8`` (``RECIPES``) is NNCF post-training quantization of the converted model
(``nncf.quantize``, CPU target, per-channel weights unless ``per_channel=False``) on up to
``samples`` inputs of the calibration data, fed in the example inputs' batch (the IR's inputs are
static), or, without calibration data, on random inputs with the same warning as the PT2E int8
recipe. The quantized IR is then run from its own artifact file on this host by the runner's
OpenVINO backend, and those outputs are the device's check (``host_outputs``).

The converter's and NNCF's console chatter (progress bars, warnings) is captured, so that a
``--json`` stdout stays JSON.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Optional

from edgeprobe.errors import LoweringError
from edgeprobe.fsutil import _fault_point
from edgeprobe.lower import Lowered, TargetRecipe, translate_export_error
from edgeprobe.models import ModelSpec

FILE_NAME = "model.ov.tar"
INSTALL_HINT = "pip install edgeprobe[openvino]"
RECIPES = frozenset({"int8"})


def lower(spec: ModelSpec, backend: str, out_dir: Path, notes: list[str],
          target_recipe: Optional[TargetRecipe] = None) -> Lowered:
    """Convert, quantize when ``target_recipe`` is int8, and write ``model.ov.tar`` into ``out_dir``."""
    import torch

    try:
        import openvino as ov
    except ImportError as exc:
        raise LoweringError(f"the OpenVINO target needs openvino ({exc}): {INSTALL_HINT}") from None
    if target_recipe is not None and target_recipe.name not in RECIPES:
        raise LoweringError(f"the OpenVINO target carries out {sorted(RECIPES)}, not {target_recipe.name!r}")
    try:
        program = spec.program()
    except Exception as exc:  # noqa: BLE001
        raise translate_export_error(spec, exc) from exc
    chatter = io.StringIO()
    shapes = [list(x.shape) for x in spec.example_inputs]  # static; the element types are the program's
    try:
        with torch.no_grad(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            model = ov.convert_model(program, input=shapes)
    except Exception as exc:  # noqa: BLE001  (OpConversionFailure, RuntimeError, ...: the converter's own)
        raise _converter_error(spec, exc) from exc
    said = [line.strip() for line in chatter.getvalue().splitlines() if line.strip()]
    notes.append("openvino.convert_model from the ExportedProgram, static input shapes, fp32 weights "
                 "(compress_to_fp16=False); run on CPU with INFERENCE_PRECISION_HINT f32"
                 + (f"; converter said: {said[-1][:200]}" if said else ""))
    if target_recipe is not None:
        model = _int8(model, spec, target_recipe, notes)
    _write_tar(model, out_dir / FILE_NAME)
    _fault_point("lower:model-written")
    if target_recipe is None:
        return Lowered(FILE_NAME)
    outputs = _run_artifact(out_dir / FILE_NAME, spec)
    if all(not t.is_floating_point() or not t.any() for t in outputs):
        # e.g. random-weight MobileNetV2, whose logits (~1e-9) are below one int8 step: the check
        # then passes for any device that also gives zeros, which the record should not hide
        notes.append("this int8 artifact's outputs on the example inputs are all zero: the device check can "
                     "only catch a crash or non-zero garbage, not a wrong result")
    return Lowered(FILE_NAME, host_outputs=outputs)


def _converter_error(spec: ModelSpec, exc: Exception) -> LoweringError:
    """``translate_export_error`` with the converter's summary instead of its first line, which is
    OpenVINO's source location ("Check 'false' failed at ...cpp:151:"); the summary names the
    operators it has no conversion rule for."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    summary = [ln.lstrip("- ").strip() for ln in lines if ln.startswith("--")]
    why = "; ".join(summary) or (lines[-1] if lines else "")
    if not why:
        return translate_export_error(spec, exc)
    return LoweringError(f"lowering {spec.ref} failed in {type(exc).__name__}: {why[:500]}")


def _write_tar(model: Any, path: Path) -> None:
    """``model.xml`` + ``model.bin`` as ``ov.save_model`` writes them, in an uncompressed tar whose
    members carry no time, owner or mode of this host."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="ov-ir-") as d:
        ov.save_model(model, str(Path(d) / "model.xml"), compress_to_fp16=False)
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in ("model.xml", "model.bin"):
                info = tar.gettarinfo(str(Path(d) / name), arcname=name)
                info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
                with open(Path(d) / name, "rb") as f:
                    tar.addfile(info, f)


def _int8(model: Any, spec: ModelSpec, recipe: TargetRecipe, notes: list[str]) -> Any:
    """NNCF static int8 of the converted model, calibrated as the PT2E int8 recipe is."""
    from edgeprobe import compress

    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
    except ImportError as exc:
        raise LoweringError(f"OpenVINO int8 needs nncf ({exc}): {INSTALL_HINT}") from None
    from edgeprobe.compress.quantize import _samples  # the PT2E recipe's sampling: the same data, warning, notes

    samples = int(recipe.params.get("samples", 256))
    per_channel = bool(recipe.params.get("per_channel", True))
    ctx = compress.Context(spec.example_inputs, calibration=recipe.calibration, log=recipe.log)
    feed = [tuple(t.detach().contiguous().numpy() for t in inputs) for inputs in _samples(ctx, samples, notes)]
    batch = int(spec.example_inputs[0].shape[0]) if spec.example_inputs[0].dim() else 1
    advanced = AdvancedQuantizationParameters(weights_quantization_params=QuantizationParameters(per_channel=per_channel))
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            quantized = nncf.quantize(model, nncf.Dataset(feed, lambda inputs: list(inputs)), subset_size=len(feed),
                                      target_device=nncf.TargetDevice.CPU, advanced_parameters=advanced)
    except Exception as exc:  # noqa: BLE001  (nncf's own errors, RuntimeError from OpenVINO)
        raise translate_export_error(spec, exc) from exc
    notes.append(f"int8 by NNCF {nncf.__version__} (nncf.quantize, CPU target, "
                 f"{'per-channel' if per_channel else 'per-tensor'} weights) on {len(feed) * batch} calibration "
                 f"samples ({'random' if recipe.calibration is None else 'given'}); layers left in floating point "
                 "run in f32")
    recipe.log(f"openvino int8: NNCF calibrated on {len(feed) * batch} samples")
    return quantized


def _run_artifact(path: Path, spec: ModelSpec) -> tuple[Any, ...]:
    """The artifact's own outputs on the example inputs, run from its file by the runner's OpenVINO backend."""
    from edgeprobe_runner.backends import openvino as ov_backend

    try:
        loaded = ov_backend.load(str(path), "forward", 0)
        return tuple(t.clone() for t in loaded.run(list(spec.example_inputs)))
    except Exception as exc:  # noqa: BLE001
        raise translate_export_error(spec, exc) from exc
