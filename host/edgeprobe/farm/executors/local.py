"""The executor seam of the farm: run one worker per device, somewhere. ``ThreadExecutor`` runs them
as threads of this process; a farm on Ray (``executors/ray.py``) keeps these
threads on the driver and sends each measurement to the device's actor through its ``Opener``.

The scheduler hands the executor plain callables and waits on opaque handles; it assumes nothing
about threads (no shared locks, no thread ids): a worker talks to the others only through the
database, so it can as well run in another process or on another host.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol


class Handle(Protocol):
    def done(self) -> bool: ...

    def result(self, timeout_s: Optional[float] = None) -> Any:
        """The worker's return value; re-raises what it raised; TimeoutError after ``timeout_s``."""
        ...


class Executor(Protocol):
    def submit(self, name: str, fn: Callable[[], Any]) -> Handle: ...

    def shutdown(self) -> None: ...


@dataclass
class _ThreadHandle:
    thread: threading.Thread
    box: dict = field(default_factory=dict)

    def done(self) -> bool:
        return not self.thread.is_alive()

    def result(self, timeout_s: Optional[float] = None) -> Any:
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise TimeoutError(f"worker {self.thread.name} still running after {timeout_s} s")
        if "error" in self.box:
            raise self.box["error"]
        return self.box.get("value")


class ThreadExecutor:
    """Workers as daemon threads of this process (one per device: they spend their time waiting on
    the device, so the interpreter lock is not what limits them)."""

    def __init__(self) -> None:
        self._handles: list[_ThreadHandle] = []

    def submit(self, name: str, fn: Callable[[], Any]) -> Handle:
        box: dict = {}

        def body() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the handle
                box["error"] = exc

        t = threading.Thread(target=body, name=f"farm-{name}", daemon=True)
        handle = _ThreadHandle(t, box)
        self._handles.append(handle)
        t.start()
        return handle

    def shutdown(self) -> None:
        for h in self._handles:
            h.thread.join()
        self._handles.clear()
