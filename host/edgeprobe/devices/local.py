"""The built-in ``local`` device: this machine, runners started as subprocesses."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from edgeprobe.devices.base import SHELL, RunResult, TransportBase
from edgeprobe.errors import TransportError


class LocalTransport(TransportBase):
    kind = "local"
    # no sha256: a local artifact is copied as it is, so that the runner itself meets (and reports)
    # a damaged file, as it would on a device
    capabilities = frozenset({SHELL})

    def __init__(self, workdir: Optional[str] = None) -> None:
        self._owned = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="edgeprobe-local-")
        Path(self.workdir).mkdir(parents=True, exist_ok=True)

    def push(self, local: Path, remote: str) -> None:
        try:
            Path(remote).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, remote)
        except OSError as exc:
            raise TransportError(f"local push {local} -> {remote} failed: {exc}") from None

    def pull(self, remote: str, local: Path) -> None:
        try:
            shutil.copyfile(remote, local)
        except OSError as exc:
            raise TransportError(f"local pull {remote} failed: {exc}") from None

    def run(self, argv: Sequence[str], timeout_s: float) -> RunResult:
        """Run in a fresh process group; on timeout the whole group is killed."""
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                errors="replace", start_new_session=True, cwd=self.workdir,
            )
        except OSError as exc:
            raise TransportError(f"cannot start {argv[0]}: {exc}") from None
        try:
            out, err = proc.communicate(timeout=timeout_s)
            return RunResult(proc.returncode, out, err, time.monotonic() - t0)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return RunResult(None, out, err, time.monotonic() - t0, timed_out=True)

    def shell(self, command: str, timeout_s: float = 30.0) -> str:
        """``sh -c command`` on this machine; stdout (the device-state probe uses it)."""
        try:
            return subprocess.run(["sh", "-c", command], capture_output=True, text=True, errors="replace",
                                  timeout=timeout_s).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransportError(f"local shell failed: {exc}") from None

    def info(self) -> dict[str, str]:
        u = platform.uname()
        return {"os": u.system, "kernel": u.release, "machine": u.machine, "hostname": u.node,
                "cores": str(os.cpu_count())}

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.workdir, ignore_errors=True)
