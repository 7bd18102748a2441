"""An artifact directory on the host (model file, test vectors, manifest), read and verified without
torch: a farm agent (``farm/agent.py``) measures artifacts shipped to it and needs only this and the
runner bundles. ``edgeprobe.lower`` writes artifacts and re-exports what is here."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgeprobe.errors import ArtifactError
from edgeprobe.fsutil import sha256_file
from edgeprobe.results import Manifest, from_dict

MANIFEST = "manifest.json"


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


def _check_file_name(mpath: Path, field: str, name: object) -> None:
    """A manifest names files *inside* its own directory: a plain file name, never a path (a
    ``../other/model.pte`` or an absolute path would make another directory's file the artifact
    that is pushed to the device), never over NAME_MAX, never with control characters."""
    ok = (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
          and not any(ord(c) < 32 or ord(c) == 127 for c in name) and len(os.fsencode(name)) <= 255)
    if not ok:
        shown = repr(name)[:80]
        raise ArtifactError(f"{mpath}: {field} {shown} is not a file name inside the artifact directory; "
                            "delete the directory and export again")


def _read_manifest(directory: Path) -> Manifest:
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST}; re-export it with `edgeprobe export`")
    try:
        manifest = from_dict(Manifest, json.loads(mpath.read_text()))
    except (json.JSONDecodeError, Exception) as exc:  # noqa: BLE001
        why = " ".join(str(exc).split())[:300]
        raise ArtifactError(f"{mpath} is unreadable ({why}); delete {directory} and export again") from None
    _check_file_name(mpath, "artifact_file", manifest.artifact_file)
    _check_file_name(mpath, "vectors_file", manifest.vectors_file)
    if manifest.etrecord_file is not None:
        _check_file_name(mpath, "etrecord_file", manifest.etrecord_file)
    return manifest


def load_artifact(directory: Path) -> Artifact:
    """Read an artifact directory, verifying that the model and vectors files match their manifest."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    for name, sha in ((manifest.artifact_file, manifest.artifact_sha256), (manifest.vectors_file, manifest.vectors_sha256)):
        path = directory / name
        if not path.is_file() or sha256_file(path) != sha:
            raise ArtifactError(
                f"{path} does not match the sha256 in its manifest (corrupt or truncated); "
                f"delete {directory} and export again"
            )
    return Artifact(directory, manifest)
