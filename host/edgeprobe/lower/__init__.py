"""Lowering: a ``ModelSpec`` becomes an artifact directory (model file, test vectors, manifest).

Artifacts live in a content-addressed cache: the key hashes the model's content (its exported
graph and weights, see ``ModelSpec.fingerprint``), the target, backend, recipe and tool versions,
so a second bench of the same model skips lowering. An artifact (in the cache or ``out_dir``) is
reused only when its manifest's ``cache_key`` is the requested one, and its files match their
sha256s. Each artifact is written into a temporary directory beside its place and swapped in
atomically (``fsutil.replace_dir``), under a per-place lock, so a reader sees the old artifact or
the new one, never a half-written one. ``out_dir`` may name a new or empty directory or an
edgeprobe artifact; any other directory is the user's and is refused, never deleted.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from edgeprobe import versions
from edgeprobe.artifact import MANIFEST, Artifact, _read_manifest, load_artifact  # noqa: F401 - Artifact, load_artifact re-exported
from edgeprobe.errors import ArtifactError, LoweringError, UsageError
from edgeprobe.fsutil import _fault_point, fsync_tree, locked, make_temp_dir, remove_leftovers, replace_dir, sha256_file
from edgeprobe.lower import capabilities
from edgeprobe.models import ModelSpec
from edgeprobe.results import Manifest, TensorSpec, to_dict
from edgeprobe_runner import vectors as epv

LOWERING_VERSION = 2  # bump when what lowering writes changes (2: quantized vectors from the .pte itself)
VECTORS = "vectors.epv"

# Output check for fp32 lowering: |actual - expected| <= atol + rtol * |expected|, with atol scaled
# to the outputs (random-weight models can have logits around 1e-9, where a fixed atol of 1e-4
# would pass any output at all).
FP32_RTOL = 1e-3
FP32_ATOL_OF_MAX = 1e-4
QUANT_RTOL = 0.05
QUANT_ATOL_OF_MAX = 0.05


def scaled_atol(expected: tuple[torch.Tensor, ...]) -> float:
    """``FP32_ATOL_OF_MAX`` times the largest finite |value| among the floating-point outputs."""
    peaks = [t.detach().abs().nan_to_num(0.0, 0.0, 0.0).max().item()
             for t in expected if t.is_floating_point() and t.numel()]
    return FP32_ATOL_OF_MAX * max(peaks, default=0.0)

Progress = Callable[[str], None]

# capabilities target -> the module under edgeprobe.lower that lowers for it (``lower(spec, backend,
# out_dir, notes) -> Lowered``)
TARGET_MODULES = {"executorch": "executorch", "torchscript_lite": "torchscript_lite", "onnxruntime": "onnx",
                  "openvino": "openvino", "ncnn": "ncnn", "litert": "litert"}


def cache_dir() -> Path:
    env = os.environ.get("EDGEPROBE_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("edgeprobe")) / "artifacts"




def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _raw(t: torch.Tensor) -> epv.RawTensor:
    t = t.detach().contiguous().cpu()
    return epv.RawTensor(_dtype_name(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _specs(tensors: tuple[torch.Tensor, ...], prefix: str) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(f"{prefix}{i}", _dtype_name(t.dtype), tuple(t.shape)) for i, t in enumerate(tensors))


def cache_key(spec: ModelSpec, cap: capabilities.Capability, recipe: str,
              target_recipe: Optional["TargetRecipe"] = None) -> str:
    payload = {
        "model": spec.fingerprint(),
        "target": cap.target,
        "format": cap.format,
        "backend": cap.backend,
        "recipe": recipe,
        "rtol": FP32_RTOL,
        "atol_of_max": FP32_ATOL_OF_MAX,
        "lowering_version": LOWERING_VERSION,
        "versions": versions.tool_versions(),
    }
    extra = versions.target_versions(cap.target)
    if extra:  # only where there are some, so the keys of existing pte/ptl artifacts stay as they were
        payload["target_versions"] = extra
    if target_recipe is not None:
        payload["target_recipe"] = target_recipe.key()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _is_artifact_dir(directory: Path) -> bool:
    """A directory edgeprobe may replace: one with a readable manifest (its files may be damaged)."""
    try:
        _read_manifest(directory)
        return True
    except ArtifactError:
        return False


def _out_path(out_dir: Path) -> Path:
    """Check ``out_dir`` before any work: a new or empty directory, or an edgeprobe artifact."""
    out = Path(out_dir)
    if out.is_symlink():
        out = out.resolve()  # replace what the link names, not the link
    here = Path.cwd().resolve()
    resolved = out.resolve()
    if resolved == here or resolved in here.parents:
        raise UsageError(f"--out {out_dir} is the current directory or one of its parents, which edgeprobe will not "
                         "replace; name a new directory for the artifact, e.g. --out artifact")
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"--out {out_dir} is a file; name a new directory for the artifact")
    if out.is_dir() and any(out.iterdir()) and not _is_artifact_dir(out):
        raise UsageError(f"--out {out_dir} is not empty and is not an edgeprobe artifact (no readable {MANIFEST}); "
                         "edgeprobe replaces only its own artifact directories: name a new or empty directory, "
                         "or move this one away yourself")
    return out


def _lock_path(final: Path) -> Path:
    """One lock per artifact place, kept under the cache (never beside a user's --out)."""
    digest = hashlib.sha256(str(final.resolve()).encode()).hexdigest()[:32]
    return cache_dir() / ".locks" / f"{digest}.lock"


def _reusable(final: Path, key: str) -> Optional[Artifact]:
    """The artifact at ``final`` when it is complete, undamaged and lowered for ``key``."""
    if not (final / MANIFEST).is_file():
        return None
    try:
        art = load_artifact(final)
    except ArtifactError:
        return None  # damaged: rebuilt and swapped in, never served
    if art.manifest.cache_key != key:
        return None  # another model, recipe or tool version: replaced, never served
    return Artifact(art.dir, art.manifest, cached=True)


def lower(
    spec: ModelSpec,
    *,
    format: str = "pte",
    backend: Optional[str] = None,
    recipe: str = "fp32",
    use_cache: bool = True,
    out_dir: Optional[Path] = None,
    progress: Optional[Progress] = None,
    compression: Sequence[dict] = (),
    quantized: bool = False,
    target_recipe: Optional[TargetRecipe] = None,
) -> Artifact:
    """Lower ``spec`` for (format, backend); reuse the cached artifact when one exists.

    ``compression``: what the recipe's steps did (recorded in the manifest). ``quantized``: the
    runner's check of the artifact against the reference graph gets a looser tolerance, because
    int8 kernels round differently from the fp32-simulated q/dq reference. ``target_recipe``: a
    recipe step the target carries out itself while lowering (``target_recipes``); implies ``quantized``."""
    cap = capabilities.resolve(format, backend)
    say = progress or (lambda _msg: None)
    checked_out = _out_path(Path(out_dir)) if out_dir else None  # refused before any work
    key = cache_key(spec, cap, recipe, target_recipe)
    final = checked_out or cache_dir() / key
    with locked(_lock_path(final)):
        remove_leftovers(final, ".tmp-", ".old-")  # from killed writers: under the lock no live one owns them
        if use_cache:
            cached = _reusable(final, key)
            if cached is not None:
                say(f"cached artifact {final}")
                return cached
        if checked_out is not None:
            _out_path(checked_out)  # still new, empty or an artifact now that the lock is held
        manifest = _lower_into(spec, cap, recipe, key, final, say, compression,
                               quantized or target_recipe is not None, target_recipe)
    say(f"artifact {final}")
    return Artifact(final, manifest)


def _lower_into(spec: ModelSpec, cap: capabilities.Capability, recipe: str, key: str, final: Path, say: Progress,
                compression: Sequence[dict], quantized: bool, target_recipe: Optional[TargetRecipe]) -> Manifest:
    """Write the artifact into a temporary directory beside ``final``, then swap it in."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(final, ".tmp-")
    try:
        notes: list[str] = []
        target = importlib.import_module(f"edgeprobe.lower.{TARGET_MODULES[cap.target]}")
        say(f"lowering {spec.ref} to {cap.format} ({cap.backend})")
        if target_recipe is not None:
            lowered = target.lower(spec, cap.backend, tmp, notes, target_recipe=target_recipe)
        else:
            lowered = target.lower(spec, cap.backend, tmp, notes)

        expected = spec.eager_outputs(spec.example_inputs)
        rtol, atol = FP32_RTOL, scaled_atol(expected)
        if quantized and lowered.host_outputs is not None:
            # the target ran its own artifact on this host (the runtime the device runs): the check catches
            # a broken deployment, fidelity to fp32 is scored separately
            expected = tuple(lowered.host_outputs)
            rtol, atol = QUANT_RTOL, max(scaled_atol(expected), QUANT_ATOL_OF_MAX * max(
                (t.abs().max().item() for t in expected if t.is_floating_point() and t.numel()), default=0.0))
            notes.append(f"reduced precision: the device's outputs are checked against this artifact run by "
                         f"{cap.target} on the host, within rtol {rtol:g}, atol {atol:.3g}")
        elif quantized and cap.target == "executorch":
            # The q/dq reference graph simulates int8 in fp32; XNNPACK's int8 kernels requantize with
            # their own rounding, and on deep models (MobileNetV2) the difference grows past any fixed
            # share of the output range. The device check exists to catch a broken deployment, so the
            # expected outputs are this artifact's own, run by ExecuTorch's runtime on this host (the
            # same kernels the native runner links); fidelity to fp32 is scored separately.
            expected = _run_pte(tmp / lowered.file_name, spec.example_inputs)
            rtol, atol = QUANT_RTOL, max(scaled_atol(expected), QUANT_ATOL_OF_MAX * max(
                (t.abs().max().item() for t in expected if t.is_floating_point() and t.numel()), default=0.0))
            notes.append(f"quantized: the device's outputs are checked against this .pte run by ExecuTorch on the "
                         f"host (not the q/dq reference graph), within rtol {rtol:g}, atol {atol:.3g}")
        with open(tmp / VECTORS, "wb") as f:
            epv.write(f, [epv.TestSet(tuple(_raw(x) for x in spec.example_inputs), tuple(_raw(y) for y in expected))])
        _fault_point("lower:vectors-written")
        model_path = tmp / lowered.file_name
        manifest = Manifest(
            model_ref=spec.ref,
            recipe=recipe,
            target=cap.target,
            backend=cap.backend,
            format=cap.format,
            artifact_file=lowered.file_name,
            artifact_sha256=sha256_file(model_path),
            artifact_size_bytes=model_path.stat().st_size,
            vectors_file=VECTORS,
            vectors_sha256=sha256_file(tmp / VECTORS),
            inputs=_specs(spec.example_inputs, "input"),
            outputs=_specs(expected, "output"),
            rtol=rtol,
            atol=atol,
            planned_memory_bytes=lowered.planned_memory_bytes,
            tool_versions={**versions.tool_versions(), **versions.target_versions(cap.target)},
            cache_key=key,
            created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            etrecord_file=lowered.etrecord_file,
            notes=tuple(notes),
            compression=tuple(compression),
        )
        (tmp / MANIFEST).write_text(json.dumps(to_dict(manifest), indent=2) + "\n")  # last: marks it complete
        fsync_tree(tmp)
        _fault_point("lower:manifest-written")
        replace_dir(tmp, final, fault="lower")  # atomic: readers see the old artifact or this one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _run_pte(path: Path, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    import executorch.kernels.quantized  # noqa: F401 - quantized kernels for weight-only programs
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    return tuple(t.clone() for t in method.execute(list(inputs)))


@dataclass(frozen=True)
class Lowered:
    """What a target module returns after writing its files into the artifact directory.
    ``host_outputs``: the artifact's own outputs on the example inputs, run by its runtime on this
    host (reduced-precision targets return them: the device's outputs are checked against them)."""

    file_name: str
    planned_memory_bytes: tuple[int, ...] = ()
    etrecord_file: Optional[str] = None
    host_outputs: Optional[tuple[torch.Tensor, ...]] = None


@dataclass(frozen=True)
class TargetRecipe:
    """A recipe step that a lowering target carries out itself, in its own toolchain: NNCF int8 for
    OpenVINO, XNNPACK fp16 for ExecuTorch. The target module lists them in ``RECIPES``; the step's
    parameters and the calibration data (a ``compress.Dataset`` or None) come with it."""

    name: str
    params: dict
    calibration: Optional[object] = None
    log: Callable[[str], None] = lambda _m: None

    def key(self) -> dict:
        """What enters the cache key: the step and the calibration data's digest."""
        cal = getattr(self.calibration, "x", None)
        digest = None
        if cal is not None:
            t = cal.detach().contiguous().cpu()
            digest = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:32]
        return {"name": self.name, "params": {k: self.params[k] for k in sorted(self.params)}, "calibration": digest}


def target_recipes(format: str, backend: Optional[str] = None) -> frozenset[str]:
    """The recipe steps the target of (format, backend) carries out itself (its module's ``RECIPES``)."""
    cap = capabilities.resolve(format, backend)
    mod = importlib.import_module(f"edgeprobe.lower.{TARGET_MODULES[cap.target]}")
    return frozenset(getattr(mod, "RECIPES", ()))


def translate_export_error(spec: ModelSpec, exc: Exception) -> LoweringError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return LoweringError(f"lowering {spec.ref} failed in {type(exc).__name__}: {first}")
