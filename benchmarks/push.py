"""ADB push throughput: edgeprobe's ADB transport (adb-shell) vs Debian's `adb push`, same test adbd.

For each maxdata the device side is one test adbd (``tests/adbd.py``, the real ADB wire protocol on
loopback) started in its own process, so that neither client shares a Python interpreter (and its
GIL) with the server. Each repeat pushes the same random file through

* ``AdbTransport.push`` (what ``edgeprobe bench --device adb:...`` deploys with: mkdir, sync SEND to a
  temporary name, rename), and
* ``adb -s 127.0.0.1:PORT push`` (Debian's adb client through its own adb server on an isolated port
  and HOME; the server is started and connected before timing),

alternating the two, and checks the sha256 of the file that arrived in the adbd's sandbox.
The wall time of each whole push is timed; the table shows the median over the repeats in MB/s
(1 MB = 10^6 bytes) and the ratio edgeprobe/adb.

    .venv/bin/python benchmarks/push.py [--size-mb 50] [--repeats 3] [--maxdata 1048576,262144]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
REMOTE_DIR = "/data/local/tmp/edgeprobe-bench"

# The test adbd in a process of its own; prints its port, serves until stdin closes.
_SERVER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from adbd import TestAdbd
with TestAdbd(Path(sys.argv[2]), maxdata=int(sys.argv[3])) as d:
    print(d.port, flush=True)
    sys.stdin.read()
"""


def _sha256(path: Path) -> str:
    from edgeprobe.lower import sha256_file

    return sha256_file(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Adbd:
    """tests/adbd.py's TestAdbd in a child process."""

    def __init__(self, root: Path, maxdata: int) -> None:
        self.root = root
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(REPO / "tests"), str(root), str(maxdata)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"test adbd did not start (got {line!r})")
        self.port = int(line)

    def device_file(self, remote: str) -> Path:
        return self.root / remote.lstrip("/")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _AdbClient:
    """Debian's adb client with its own adb server (isolated port and HOME), connected to the adbd."""

    def __init__(self, home: Path, serial: str, adb: str = "adb") -> None:
        self.serial = serial
        self.server_port = _free_port()
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HOME": str(home), "ANDROID_ADB_SERVER_PORT": str(self.server_port)}
        self.adb = [adb, "-P", str(self.server_port)]
        self._run("start-server", check=True)
        # A new key: adb first reports "failed to authenticate" (the phone would show its prompt);
        # the test adbd allows the key and the device comes online.
        out = self._run("connect", serial).stdout
        if "connected" not in out and "failed to authenticate" not in out:
            raise RuntimeError(f"adb connect {serial}: {out}")
        self._run("-s", serial, "wait-for-device", check=True)

    def _run(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run([*self.adb, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"adb {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def push(self, local: Path, remote: str) -> None:
        self._run("-s", self.serial, "push", str(local), remote, check=True, timeout=600)

    def close(self) -> None:
        subprocess.run([*self.adb, "kill-server"], env=self.env, capture_output=True, timeout=30)


def _timed_push(push, local: Path, remote: str, device_file: Path, want_sha: str) -> float:
    if device_file.exists():
        device_file.unlink()
    t0 = time.perf_counter()
    push(local, remote)
    dt = time.perf_counter() - t0
    got = _sha256(device_file) if device_file.is_file() else None
    if got != want_sha:
        raise RuntimeError(f"pushed file {device_file} is not intact: sha256 {got} != {want_sha}")
    device_file.unlink()
    return dt


def run_push_bench(size_mb: int = 50, maxdatas: Sequence[int] = (1 << 20, 256 << 10), repeats: int = 3,
                   adb: Optional[str] = None, log=None) -> list[dict]:
    """Push a ``size_mb`` MB random file through edgeprobe and through `adb push`, per maxdata.

    Returns one dict per maxdata: maxdata, size_bytes, edgeprobe_s / adb_s (every repeat, seconds),
    edgeprobe_mb_s / adb_mb_s (from the median time) and ratio (edgeprobe_mb_s / adb_mb_s)."""
    from edgeprobe.devices.adb import AdbTransport

    adb = adb or shutil.which("adb")
    if not adb:
        raise RuntimeError("Debian's adb client is not installed (apt-get install adb)")
    say = log or (lambda _m: None)
    size = int(size_mb * 1_000_000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeprobe-push-bench-") as tmp_s:
        tmp = Path(tmp_s)
        local = tmp / "push.bin"
        with open(local, "wb") as f:
            left = size
            while left:
                n = min(left, 1 << 22)
                f.write(os.urandom(n))
                left -= n
        want = _sha256(local)
        for maxdata in maxdatas:
            server = _Adbd(tmp / f"dev-{maxdata}", maxdata)
            transport = client = None
            try:
                serial = f"127.0.0.1:{server.port}"
                transport = AdbTransport(serial, key=tmp / "edgeprobe-key" / "adbkey", auth_timeout_s=10)
                client = _AdbClient(tmp / "adb-home", serial, adb=adb)
                ep_remote, adb_remote = f"{REMOTE_DIR}/edgeprobe.bin", f"{REMOTE_DIR}/adb.bin"
                transport.shell(f"mkdir -p {REMOTE_DIR}")
                ep_s, adb_s = [], []
                for i in range(repeats):
                    ep_s.append(_timed_push(transport.push, local, ep_remote, server.device_file(ep_remote), want))
                    adb_s.append(_timed_push(client.push, local, adb_remote, server.device_file(adb_remote), want))
                    say(f"maxdata {maxdata}: repeat {i + 1}/{repeats}: edgeprobe {ep_s[-1]:.3f} s, adb {adb_s[-1]:.3f} s")
            finally:
                if client:
                    client.close()
                if transport:
                    transport.close()
                server.close()
            ep_mb_s = size / 1e6 / statistics.median(ep_s)
            adb_mb_s = size / 1e6 / statistics.median(adb_s)
            rows.append({"maxdata": maxdata, "size_bytes": size, "repeats": repeats, "edgeprobe_s": ep_s,
                         "adb_s": adb_s, "edgeprobe_mb_s": ep_mb_s, "adb_mb_s": adb_mb_s,
                         "ratio": ep_mb_s / adb_mb_s})
    return rows


def _maxdata_label(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n >> 10} KiB"


def adb_version(adb: Optional[str] = None) -> str:
    try:
        out = subprocess.run([adb or "adb", "version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return " ".join(line.split()[-1] for line in out.splitlines()[:2] if line.split())


def print_table(rows: list[dict], size_mb: float, repeats: int) -> None:
    print(f"{size_mb:g} MB random file (1 MB = 10^6 bytes), median of {repeats} repeats, sha256 checked on the "
          f"device side after every push; adb {adb_version()}.\n")
    print("| maxdata | edgeprobe MB/s | adb push MB/s | ratio edgeprobe/adb |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {_maxdata_label(r['maxdata'])} | {r['edgeprobe_mb_s']:.1f} | {r['adb_mb_s']:.1f} | "
              f"{r['ratio']:.2f} |", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=float, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--maxdata", default=f"{1 << 20},{256 << 10}", help="comma-separated maxdata values (bytes)")
    args = ap.parse_args(argv)
    maxdatas = [int(m) for m in args.maxdata.split(",")]
    print("## ADB push throughput (edgeprobe AdbTransport.push vs `adb push`, same test adbd)\n")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}\n")
    rows = run_push_bench(args.size_mb, maxdatas, args.repeats,
                          log=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True))
    print_table(rows, args.size_mb, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
