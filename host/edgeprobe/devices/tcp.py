"""TCP transport: talks to `edgeprobe runner serve` (device_runner/edgeprobe_runner/server.py).

Discovery is zeroconf (``_edgeprobe._tcp.local.``); the protocol is the server's framing.
"""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from edgeprobe.devices.base import RunResult
from edgeprobe.errors import TransportError
from edgeprobe_runner.server import SERVICE_TYPE, ProtocolError, recv_exact, recv_msg, send_msg

CONNECT_TIMEOUT_S = 10.0


class TcpTransport:
    kind = "tcp"
    workdir = "jobs"  # relative: the server confines every path to its own work dir

    def __init__(self, host: str, port: int, token: Optional[str], *, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        if not token:
            raise TransportError(f"tcp:{host}:{port} needs the runner's token: pass --token or set EDGEPROBE_TOKEN "
                                 "(`edgeprobe runner serve` prints it at start)")
        self.host, self.port = host, port
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise TransportError(f"cannot reach runner at {host}:{port}: {exc}; is `edgeprobe runner serve` running?") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reply = self._call({"op": "hello", "token": token})
        self._info = {k: str(v) for k, v in reply.get("info", {}).items()}

    def _call(self, header: dict[str, Any], payload: bytes = b"", timeout_s: float = 60.0) -> dict[str, Any]:
        try:
            self.sock.settimeout(timeout_s)
            try:
                send_msg(self.sock, header, payload)
            except BrokenPipeError:
                pass  # the server refused mid-payload; its reply says why
            reply = recv_msg(self.sock)
        except (OSError, ProtocolError) as exc:
            raise TransportError(f"runner at {self.host}:{self.port} dropped the connection during "
                                 f"{header.get('op')}: {exc}") from None
        if not reply.get("ok"):
            raise TransportError(f"runner at {self.host}:{self.port} refused {header.get('op')}: {reply.get('error')}")
        return reply

    def push(self, local: Path, remote: str) -> None:
        data = Path(local).read_bytes()
        # generous per-file timeout: 60 s + 1 s per MB (a slow Wi-Fi link moves ~1 MB/s)
        self._call({"op": "push", "path": remote, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
                   data, timeout_s=60 + len(data) / 1e6)

    def pull(self, remote: str, local: Path) -> None:
        reply = self._call({"op": "pull", "path": remote})
        try:
            Path(local).write_bytes(recv_exact(self.sock, int(reply["size"])))
        except (OSError, ProtocolError) as exc:
            raise TransportError(f"pull of {remote} from {self.host}:{self.port} broke off: {exc}") from None

    def run(self, argv: Sequence[str], timeout_s: float) -> RunResult:
        t0 = time.monotonic()
        r = self._call({"op": "run", "argv": list(argv), "timeout_s": timeout_s}, timeout_s=timeout_s + 30)
        return RunResult(r.get("exit_code"), r.get("stdout", ""), r.get("stderr", ""),
                         float(r.get("duration_s", time.monotonic() - t0)), bool(r.get("timed_out")))

    def info(self) -> dict[str, str]:
        return dict(self._info)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def discover(timeout_s: float = 2.0, interfaces: Optional[Sequence[str]] = None) -> list[dict[str, str]]:
    """Runners advertised over zeroconf: [{name, host, port, abi, runtimes, version}]."""
    from zeroconf import InterfaceChoice, ServiceBrowser, Zeroconf

    zc = Zeroconf(interfaces=list(interfaces) if interfaces else InterfaceChoice.All)
    names: list[str] = []

    class _Listener:
        def add_service(self, _zc, _type, name):
            names.append(name)

        def update_service(self, *_a):
            pass

        def remove_service(self, *_a):
            pass

    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, _Listener())
        time.sleep(timeout_s)
        found = []
        for name in sorted(set(names)):
            info = zc.get_service_info(SERVICE_TYPE, name, timeout=int(timeout_s * 1000))
            if info is None or not info.parsed_addresses():
                continue
            props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
            found.append({"name": props.get("name") or name.removesuffix("." + SERVICE_TYPE),
                          "host": info.parsed_addresses()[0], "port": str(info.port),
                          "abi": props.get("abi", ""), "runtimes": props.get("runtimes", ""),
                          "version": props.get("version", "")})
        browser.cancel()
        return found
    finally:
        zc.close()
