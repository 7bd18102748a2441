"""Runner deployment: push the native runner bundle for a device's ABI (unchanged files skipped
by sha256, every file verified against the bundle's manifest first) and artifacts."""

from __future__ import annotations

import os
from pathlib import Path

from edgeprobe.devices.base import SHA256, SHELL, Transport


ABI_TO_MACHINE = {"arm64-v8a": "aarch64", "aarch64": "aarch64", "x86_64": "x86_64"}


def deploy_native_runner(transport: Transport) -> list[str]:
    """Push the native runner bundle for the device's ABI (skipping files already there by
    sha256) and return the command that starts it."""
    from edgeprobe.errors import RunnerNotBuiltError
    from edgeprobe.native import BINARY, install_dir, verify_bundle

    abi = transport.info().get("abi", "")
    machine = ABI_TO_MACHINE.get(abi)
    if machine is None:
        raise RunnerNotBuiltError(f"no native runner for device ABI {abi!r}; edgeprobe builds x86_64 and aarch64")
    bundle = install_dir(machine)
    binary = bundle / "bin" / BINARY
    if not binary.is_file():
        raise RunnerNotBuiltError(f"no native runner bundle for {machine} at {bundle}; build it with "
                                  f"`edgeprobe runner build`{'' if machine == os.uname().machine else ' (cross build)'}")
    files = verify_bundle(bundle)  # every file against the bundle's manifest: never push a half-written one
    remote = f"{transport.workdir}/runner/{machine}"
    for rel, sha256 in files.items():
        push_if_changed(transport, bundle / rel, f"{remote}/{rel}", sha256)
    if SHELL in transport.capabilities:
        transport.shell(f"chmod 755 {remote}/bin/{BINARY}")
    return ["env", f"LD_LIBRARY_PATH={remote}/lib", f"{remote}/bin/{BINARY}"]


def push_if_changed(transport: Transport, local: Path, remote: str, sha256: str) -> bool:
    """Push unless the device already holds a file with this sha256 (transports that can hash);
    True when it pushed."""
    if SHA256 in transport.capabilities and transport.sha256(remote) == sha256:
        return False
    transport.push(local, remote)
    return True
