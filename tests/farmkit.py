"""Parts for the farm's tests on real devices of this machine: an `edgeprobe runner serve` over TCP
(a context manager, and the ``tcp_runner`` fixture built on it), a test adbd that drops one push
only, one that can be unplugged for good, a native runner that crashes for real, and a way to
catch a process while it runs a job.

Each part injects its fault at the layer where a real one happens (the socket, the process, the
kernel's signal), so the farm sees what it would see in a lab; nothing here mocks the farm.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest

from adbd import DEVICE_DIR, TestAdbd, _Closed

TOKEN = "farm-test-token"


class RunnerServer:
    """A running `edgeprobe runner serve` process: ``where`` is its HOST:PORT, ``proc`` the process."""

    def __init__(self, proc: subprocess.Popen, where: str) -> None:
        self.proc, self.where = proc, where

    @property
    def device_id(self) -> str:
        return f"tcp:{self.where}"


@contextmanager
def runner_server(workdir: Path, native_runner: Path, *, name: str = "farm-tcp",
                  token: str = TOKEN) -> Iterator[RunnerServer]:
    """`edgeprobe runner serve` on a free loopback port, stopped (or reaped, if a test killed it) on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeprobe", "runner", "serve", "--host", "127.0.0.1", "--port", "0", "--token", token,
         "--name", name, "--workdir", str(workdir), "--native-runner", str(native_runner), "--no-zeroconf"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        yield RunnerServer(proc, json.loads(line)["listening"])
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture()
def tcp_runner(tmp_path, native_runner) -> Iterator[str]:
    """HOST:PORT of an `edgeprobe runner serve` for this test (token ``TOKEN``)."""
    with runner_server(tmp_path / "tcpdev", native_runner) as server:
        yield server.where


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid``, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid == pid:
                out.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError, IndexError):
            continue  # it ended while we looked
    return out


class KillWhenRunning(threading.Thread):
    """SIGKILL process ``pid`` the moment it has a child whose command line holds ``marker`` (a
    runner it started for a job), as a power cut or the OOM killer would. ``caught`` is that child."""

    def __init__(self, pid: int, marker: str = "--iterations", *, timeout_s: float = 300.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.marker, self.timeout_s = pid, marker, timeout_s
        self.caught: Optional[tuple[int, str]] = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self._stop_event.is_set() and time.monotonic() < deadline:
            for child in children_of(self.pid):
                if self.marker in child[1]:
                    os.kill(self.pid, signal.SIGKILL)
                    self.caught = child
                    return
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


class PushDropOnceAdbd(TestAdbd):
    """``drop_after_send_bytes`` once: the first push that passes the limit loses its connection
    (the adbd closes the socket mid-SEND); later pushes go through, as after a re-plugged cable."""

    __test__ = False
    push_drops = 0

    def _sync(self, conn: socket.socket, local: int, remote: int) -> None:
        try:
            super()._sync(conn, local, remote)
        except _Closed:
            if self.drop_after_send_bytes is not None and conn.fileno() == -1:  # closed here: the injected drop
                self.drop_after_send_bytes = None
                self.push_drops += 1
            raise


class UnpluggableAdbd(TestAdbd):
    """A test adbd that can go away for good: ``unplug`` closes its listening socket and every
    connection it holds, so every reconnect is refused. With ``unplug_on_shell``, it unplugs itself
    while the first shell command containing that text runs (the command started, then the cable
    is gone), which puts the loss in the middle of a job's run."""

    __test__ = False

    def __init__(self, *args, unplug_on_shell: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unplug_on_shell = unplug_on_shell
        self._conns: list[socket.socket] = []
        self.unplugged = threading.Event()

    def _serve(self, conn: socket.socket) -> None:
        if self.unplugged.is_set():  # accepted just before the unplug
            conn.close()
            return
        self._conns.append(conn)
        super()._serve(conn)

    def _run_service(self, conn: socket.socket, local: int, remote: int, service: str) -> None:
        if self.unplug_on_shell and self.unplug_on_shell in service and not self.unplugged.is_set():
            command = service.partition(":")[2].replace(DEVICE_DIR, str(self.root) + DEVICE_DIR)
            self.shell_log.append(command)
            env = {**os.environ, **self.env, "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
            proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=self.root, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.unplug()
            proc.wait(timeout=600)
            raise _Closed()
        super()._run_service(conn, local, remote, service)

    def unplug(self) -> None:
        self.unplugged.set()
        self._stop.set()
        self.sock.close()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


CRASH_MESSAGE = "edgeprobe-test-runner: crashing on purpose"


def crashing_runner(dir: Path, real_runner: Path, *, crashes: Optional[int]) -> tuple[Path, Path]:
    """A native runner (for ``EDGEPROBE_NATIVE_RUNNER``) that writes ``CRASH_MESSAGE`` to stderr and
    kills itself with SIGSEGV on its first ``crashes`` invocations (every one when None, until
    ``heal(dir)``), then execs the real runner. Returns (the script, its log: one line per
    invocation, its arguments)."""
    dir.mkdir(parents=True, exist_ok=True)
    log = dir / "invocations"
    script = dir / "crashy_runner"  # not in a bin/ beside a bundle.json: used as given, not verified
    limit = "" if crashes is None else f'[ "$n" -gt {int(crashes)} ] && exec "{real_runner}" "$@"\n'
    script.write_text(
        "#!/bin/sh\n"
        "ulimit -c 0\n"  # no core file for the crash we cause
        f'echo "$*" >> "{log}"\n'
        f'n=$(wc -l < "{log}")\n'
        f'[ -e "{dir / "healed"}" ] && exec "{real_runner}" "$@"\n'
        f"{limit}"
        f'echo "{CRASH_MESSAGE} (invocation $n)" >&2\n'
        "kill -SEGV $$\n")
    script.chmod(0o755)
    return script, log


def heal(dir: Path) -> None:
    """From now on the ``crashing_runner`` in ``dir`` runs the real runner."""
    (dir / "healed").write_text("")


def invocations(log: Path) -> list[str]:
    """The arguments of each invocation of a ``crashing_runner``, in order."""
    return log.read_text().splitlines() if log.exists() else []


__all__ = ["TOKEN", "RunnerServer", "runner_server", "tcp_runner", "children_of", "KillWhenRunning",
           "PushDropOnceAdbd", "UnpluggableAdbd", "crashing_runner", "heal", "invocations",
           "CRASH_MESSAGE"]
