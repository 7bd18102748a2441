"""The seam between the host and a device: a ``Transport`` moves files and runs commands.

Every transport (local subprocess now; ADB and TCP later) implements the same five calls, so the
measurement code never knows how it reaches the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence


@dataclass(frozen=True)
class RunResult:
    exit_code: Optional[int]  # None when the command was killed for its timeout; <0 = signal
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(self.stderr.rstrip().splitlines()[-lines:])


class Transport(Protocol):
    kind: str
    workdir: str  # device-side directory this transport may use

    def push(self, local: Path, remote: str) -> None: ...

    def pull(self, remote: str, local: Path) -> None: ...

    def run(self, argv: Sequence[str], timeout_s: float) -> RunResult: ...

    def info(self) -> dict[str, str]: ...

    def close(self) -> None: ...
