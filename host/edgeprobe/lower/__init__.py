"""Lowering: a ``ModelSpec`` becomes an artifact directory (model file, test vectors, manifest).

Artifacts live in a content-addressed cache: the key hashes the model's content, the target,
backend, recipe and tool versions, so a second bench of the same model skips lowering. Each
artifact is written into a temporary directory and renamed into place, so the cache never
serves a half-written artifact; on read the artifact's sha256 is checked against its manifest.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from edgeprobe import versions
from edgeprobe.errors import ArtifactError, LoweringError
from edgeprobe.lower import capabilities
from edgeprobe.models import ModelSpec
from edgeprobe.results import Manifest, TensorSpec, from_dict, to_dict
from edgeprobe_runner import vectors as epv

LOWERING_VERSION = 2  # bump when what lowering writes changes (2: quantized vectors from the .pte itself)
MANIFEST = "manifest.json"
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


@dataclass(frozen=True)
class Artifact:
    """A lowered model on the host: its directory and manifest."""

    dir: Path
    manifest: Manifest
    cached: bool = False

    @property
    def model_path(self) -> Path:
        return self.dir / self.manifest.artifact_file

    @property
    def vectors_path(self) -> Path:
        return self.dir / self.manifest.vectors_file

    @property
    def etrecord_path(self) -> Optional[Path]:
        return self.dir / self.manifest.etrecord_file if self.manifest.etrecord_file else None


def cache_dir() -> Path:
    env = os.environ.get("EDGEPROBE_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("edgeprobe")) / "artifacts"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _raw(t: torch.Tensor) -> epv.RawTensor:
    t = t.detach().contiguous().cpu()
    return epv.RawTensor(_dtype_name(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _specs(tensors: tuple[torch.Tensor, ...], prefix: str) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(f"{prefix}{i}", _dtype_name(t.dtype), tuple(t.shape)) for i, t in enumerate(tensors))


def cache_key(spec: ModelSpec, cap: capabilities.Capability, recipe: str) -> str:
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
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def load_artifact(directory: Path) -> Artifact:
    """Read an artifact directory, verifying that the model file matches its manifest."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST}; re-export it with `edgeprobe export`")
    try:
        manifest = from_dict(Manifest, json.loads(mpath.read_text()))
    except (json.JSONDecodeError, Exception) as exc:  # noqa: BLE001
        raise ArtifactError(f"{mpath} is unreadable ({exc}); delete {directory} and export again") from None
    model = directory / manifest.artifact_file
    if not model.is_file() or sha256_file(model) != manifest.artifact_sha256:
        raise ArtifactError(
            f"{model} does not match the sha256 in its manifest (corrupt or truncated); "
            f"delete {directory} and export again"
        )
    return Artifact(directory, manifest)


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
) -> Artifact:
    """Lower ``spec`` for (format, backend); reuse the cached artifact when one exists.

    ``compression``: what the recipe's steps did (recorded in the manifest). ``quantized``: the
    runner's check of the artifact against the reference graph gets a looser tolerance, because
    int8 kernels round differently from the fp32-simulated q/dq reference."""
    cap = capabilities.resolve(format, backend)
    say = progress or (lambda _msg: None)
    key = cache_key(spec, cap, recipe)
    final = Path(out_dir) if out_dir else cache_dir() / key
    if use_cache and (final / MANIFEST).is_file():
        try:
            art = load_artifact(final)
            say(f"cached artifact {final}")
            return Artifact(art.dir, art.manifest, cached=True)
        except ArtifactError:
            shutil.rmtree(final, ignore_errors=True)  # a damaged cache entry is rebuilt, never served

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        notes: list[str] = []
        if cap.target == "executorch":
            from edgeprobe.lower import executorch as target
        else:
            from edgeprobe.lower import torchscript_lite as target  # type: ignore[no-redef]
        say(f"lowering {spec.ref} to {cap.format} ({cap.backend})")
        lowered = target.lower(spec, cap.backend, tmp, notes)

        expected = spec.eager_outputs(spec.example_inputs)
        rtol, atol = FP32_RTOL, scaled_atol(expected)
        if quantized and cap.target == "executorch":
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
            tool_versions=versions.tool_versions(),
            cache_key=key,
            created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            etrecord_file=lowered.etrecord_file,
            notes=tuple(notes),
            compression=tuple(compression),
        )
        (tmp / MANIFEST).write_text(json.dumps(to_dict(manifest), indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic on one filesystem: readers see all of it or nothing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"artifact {final}")
    return Artifact(final, manifest)


def _run_pte(path: Path, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    import executorch.kernels.quantized  # noqa: F401 - quantized kernels for weight-only programs
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    return tuple(t.clone() for t in method.execute(list(inputs)))


@dataclass(frozen=True)
class Lowered:
    """What a target module returns after writing its files into the artifact directory."""

    file_name: str
    planned_memory_bytes: tuple[int, ...] = ()
    etrecord_file: Optional[str] = None


def translate_export_error(spec: ModelSpec, exc: Exception) -> LoweringError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return LoweringError(f"lowering {spec.ref} failed in {type(exc).__name__}: {first}")
