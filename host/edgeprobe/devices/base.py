"""The seam between the host and a device: a ``Transport`` moves files and runs commands.

Every transport (local subprocess, ADB, TCP runner, the in-memory mock) implements the five core
calls (push / pull / run / info / close). What only some of them can do is *declared* in
``capabilities`` and nowhere guessed: a caller asks ``SHELL in t.capabilities`` before
``t.shell(...)``, and a transport that does not declare a capability raises ``TransportError``
from it (``TransportBase`` gives every optional call that refusal).

Optional capabilities:

- ``shell``: ``shell(command, timeout_s) -> str`` runs a ``sh`` command line (hygiene readings,
  core pinning, making and removing run directories);
- ``sha256``: ``sha256(remote) -> str | None`` hashes a device file (skip unchanged pushes, verify
  a push before running it);
- ``reconnect``: ``reconnect()`` re-opens a dropped connection (a run lost mid-way is retried);
- ``remove``: ``remove(remote) -> bool`` deletes one file (transports without a shell).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, FrozenSet, Optional, Protocol, Sequence

from edgeprobe.errors import TransportError

SHELL = "shell"
SHA256 = "sha256"
RECONNECT = "reconnect"
REMOVE = "remove"
CAPABILITIES = frozenset({SHELL, SHA256, RECONNECT, REMOVE})


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
    capabilities: FrozenSet[str]  # a subset of CAPABILITIES; see the module docstring

    def push(self, local: Path, remote: str) -> None: ...

    def pull(self, remote: str, local: Path) -> None: ...

    def run(self, argv: Sequence[str], timeout_s: float) -> RunResult: ...

    def info(self) -> dict[str, str]: ...

    def close(self) -> None: ...

    # optional: callable only when declared in ``capabilities``
    def shell(self, command: str, timeout_s: float = 30.0) -> str: ...

    def sha256(self, remote: str) -> Optional[str]: ...

    def reconnect(self) -> None: ...

    def remove(self, remote: str) -> bool: ...


class TransportBase:
    """Refusals for the optional calls a transport does not declare; subclasses override the ones
    they list in ``capabilities``."""

    kind: ClassVar[str] = "?"
    capabilities: ClassVar[FrozenSet[str]] = frozenset()

    def _refuse(self, capability: str) -> TransportError:
        return TransportError(f"the {self.kind} transport has no {capability!r} capability")

    def shell(self, command: str, timeout_s: float = 30.0) -> str:
        raise self._refuse(SHELL)

    def sha256(self, remote: str) -> Optional[str]:
        raise self._refuse(SHA256)

    def reconnect(self) -> None:
        raise self._refuse(RECONNECT)

    def remove(self, remote: str) -> bool:
        raise self._refuse(REMOVE)
