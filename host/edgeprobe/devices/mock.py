"""An in-memory transport for unit tests of the measurement, retry and hygiene logic, in the spirit
of ``httpx.MockTransport``: files live in a dict, a ``run`` is answered by a handler you write (it
sees the argv and the files, and writes the record the way a runner would), and faults are
scheduled per call. It speaks no wire protocol: the real-peer tests (test adbd, TCP runner on
loopback, local subprocesses) stay the proof that the transports work; this proves the logic above
them, in milliseconds.

    def handler(run: MockRun) -> RunResult:
        run.write_record(ok_record(latencies_ms=[1.0, 1.1, 0.9]))
        return run.ok()

    t = MockTransport(handler, capabilities={SHELL, SHA256, RECONNECT})
    t.fail("run", TransportError("connection lost"))      # the next run drops the connection
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from edgeprobe.devices.base import CAPABILITIES, RECONNECT, REMOVE, SHA256, SHELL, RunResult, TransportBase
from edgeprobe.errors import TransportError, UsageError

OPS = ("push", "pull", "run", "info", "shell", "sha256", "reconnect", "remove")


@dataclass
class MockRun:
    """One ``run`` call as the handler sees it."""

    argv: list[str]
    timeout_s: float
    files: dict[str, bytes]

    def arg(self, flag: str) -> Optional[str]:
        """The value after ``flag`` in argv (``--output`` → the record path), or None."""
        for i, a in enumerate(self.argv[:-1]):
            if a == flag:
                return self.argv[i + 1]
        return None

    def write_record(self, record: dict[str, Any]) -> None:
        """Write ``record`` as JSON where the runner was told to (``--output``)."""
        out = self.arg("--output")
        if out is None:
            raise UsageError("this run has no --output: not a runner invocation")
        self.files[out] = json.dumps(record).encode()

    def ok(self, stderr: str = "", duration_s: float = 0.01) -> RunResult:
        return RunResult(0, "", stderr, duration_s)

    def exit(self, code: int, stderr: str = "", duration_s: float = 0.01) -> RunResult:
        return RunResult(code, "", stderr, duration_s)

    def timed_out(self, stderr: str = "", duration_s: Optional[float] = None) -> RunResult:
        return RunResult(None, "", stderr, self.timeout_s if duration_s is None else duration_s, timed_out=True)


Handler = Callable[[MockRun], RunResult]
ShellHandler = Callable[[str], str]


class MockTransport(TransportBase):
    kind = "mock"

    def __init__(self, handler: Handler, *, capabilities: Iterable[str] = (SHA256, REMOVE, RECONNECT),
                 shell: Optional[ShellHandler] = None, info: Optional[dict[str, str]] = None,
                 workdir: str = "/mock/work") -> None:
        caps = frozenset(capabilities) | ({SHELL} if shell is not None else frozenset())
        unknown = caps - CAPABILITIES
        if unknown:
            raise UsageError(f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
        if SHELL in caps and shell is None:
            raise UsageError("a mock with the shell capability needs a shell handler")
        self.capabilities = caps  # type: ignore[misc] - per instance: each mock declares its own
        self.handler, self._shell, self.workdir = handler, shell, workdir
        self._info = dict(info or {"os": "MockOS", "machine": "mock64", "hostname": "mock", "abi": "x86_64"})
        self.files: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []  # (op, path or command or argv[0])
        self.connected = True
        self.closed = False
        self._faults: dict[str, deque[BaseException]] = defaultdict(deque)

    # -- fault scheduling --------------------------------------------------------------------
    def fail(self, op: str, error: Optional[BaseException] = None, times: int = 1) -> None:
        """The next ``times`` calls of ``op`` raise ``error`` (default: a lost connection, after
        which every call fails until ``reconnect``)."""
        if op not in OPS:
            raise UsageError(f"unknown op {op!r}; choose one of {', '.join(OPS)}")
        for _ in range(times):
            self._faults[op].append(error or TransportError(f"mock: connection lost during {op}"))

    def _enter(self, op: str, what: str) -> None:
        self.calls.append((op, what))
        if self.closed:
            raise TransportError("mock: transport is closed")
        if op != "reconnect" and not self.connected:
            raise TransportError("mock: not connected (a previous call lost the connection)")
        if self._faults[op]:
            exc = self._faults[op].popleft()
            if isinstance(exc, TransportError):
                self.connected = False
            raise exc

    def count(self, op: str) -> int:
        return sum(1 for o, _ in self.calls if o == op)

    # -- the five calls ----------------------------------------------------------------------
    def push(self, local: Path, remote: str) -> None:
        self._enter("push", remote)
        self.files[remote] = Path(local).read_bytes()

    def pull(self, remote: str, local: Path) -> None:
        self._enter("pull", remote)
        if remote not in self.files:
            raise TransportError(f"mock: no file {remote}")
        Path(local).write_bytes(self.files[remote])

    def run(self, argv: Sequence[str], timeout_s: float) -> RunResult:
        self._enter("run", argv[0] if argv else "")
        return self.handler(MockRun(list(argv), timeout_s, self.files))

    def info(self) -> dict[str, str]:
        self._enter("info", "")
        return dict(self._info)

    def close(self) -> None:
        self.calls.append(("close", ""))
        self.closed = True

    # -- optional, when declared ------------------------------------------------------------
    def shell(self, command: str, timeout_s: float = 30.0) -> str:
        if SHELL not in self.capabilities:
            raise self._refuse(SHELL)
        self._enter("shell", command)
        assert self._shell is not None
        return self._shell(command)

    def sha256(self, remote: str) -> Optional[str]:
        if SHA256 not in self.capabilities:
            raise self._refuse(SHA256)
        self._enter("sha256", remote)
        data = self.files.get(remote)
        return hashlib.sha256(data).hexdigest() if data is not None else None

    def reconnect(self) -> None:
        if RECONNECT not in self.capabilities:
            raise self._refuse(RECONNECT)
        self._enter("reconnect", "")
        self.connected = True

    def remove(self, remote: str) -> bool:
        if REMOVE not in self.capabilities:
            raise self._refuse(REMOVE)
        self._enter("remove", remote)
        return self.files.pop(remote, None) is not None


def ok_record(latencies_ms: Sequence[float] = (1.0, 1.0, 1.0), *, flavor: str = "python",
              peak_rss_bytes: Optional[int] = None, passed: Optional[bool] = True, **overrides: Any) -> dict[str, Any]:
    """A runner record (device_runner/PROTOCOL.md) with the given per-iteration latencies, for a
    handler to write. Values not given are null (not measured), as a runner leaves them."""
    from edgeprobe.results import SCHEMA_VERSION

    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "status": "ok", "error": None,
        "runner": {"flavor": flavor, "version": "mock", "runtime": "mock", "runtime_version": "0"},
        "config": {"method": "forward", "warmup": 0, "iterations": len(latencies_ms), "min_seconds": 0.0,
                   "threads_requested": 0, "threads_used": None, "loader": "mock", "etdump": False},
        "verification": {"checked": passed is not None, "passed": passed},
        "timing": {"load_ms": None, "first_inference_ms": None,
                   "iteration_ns": [int(round(x * 1e6)) for x in latencies_ms]},
        "memory": {"baseline_rss_bytes": None, "baseline_hwm_bytes": None, "peak_rss_bytes": peak_rss_bytes,
                   "swap_bytes": None},
        "energy": None, "thermal": None, "environment": None, "artifact": {"size_bytes": None},
    }
    record.update(overrides)
    return record


@dataclass
class RecordingHandler:
    """A handler that answers every run with ``ok_record(latencies_ms)`` and keeps the argvs."""

    latencies_ms: Sequence[float] = (1.0, 1.0, 1.0)
    argvs: list[list[str]] = field(default_factory=list)

    def __call__(self, run: MockRun) -> RunResult:
        self.argvs.append(run.argv)
        run.write_record(ok_record(self.latencies_ms))
        return run.ok()
