"""TCP transport: talks to `edgeprobe runner serve` (device_runner/edgeprobe_runner/server.py).

Discovery is zeroconf (``_edgeprobe._tcp.local.``); the protocol is ``edgeprobe_runner.wire`` (framing
and the v2 handshake) and the server's structured requests (device_runner/PROTOCOL.md).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from edgeprobe.devices.base import RECONNECT, REMOVE, RunResult, TransportBase
from edgeprobe.errors import TransportError
from edgeprobe_runner.server import SERVICE, SERVICE_TYPE, request_from_argv
from edgeprobe_runner.wire import (ProtocolError, client_handshake, recv_msg, recv_to_file, send_file, send_msg,
                                   sha256_of)

CONNECT_TIMEOUT_S = 10.0


class TcpTransport(TransportBase):
    """One authenticated connection to a runner server. The token stays here: the handshake proves
    it both ways (edgeprobe_runner.wire), so a server that does not hold it is never talked to."""

    kind = "tcp"
    capabilities = frozenset({RECONNECT, REMOVE})
    workdir = "jobs"  # relative: the server confines every path to its own work dir

    def __init__(self, host: str, port: int, token: Optional[str], *, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        if not token:
            raise TransportError(f"tcp:{host}:{port} needs the runner's token: pass --token or set EDGEPROBE_TOKEN "
                                 "(`edgeprobe runner serve` prints it at start)")
        self.host, self.port, self._token, self._timeout_s = host, port, token, timeout_s
        self.sock: Optional[socket.socket] = None
        self._info: dict[str, str] = {}
        self._connect()

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._timeout_s)
        except OSError as exc:
            raise TransportError(f"cannot reach runner at {self.where}: {exc}; is `edgeprobe runner serve` running?") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            info = client_handshake(sock, self._token, SERVICE, self.where)
        except (OSError, ProtocolError) as exc:
            sock.close()
            raise TransportError(f"runner at {self.where}: {exc}") from None
        self.sock = sock
        self._info = {k: str(v) for k, v in info.items()}

    def reconnect(self) -> None:
        self.close()
        self._connect()

    def _call(self, header: dict[str, Any], payload_file: Any = None, size: int = 0,
              timeout_s: float = 60.0) -> dict[str, Any]:
        if self.sock is None:  # the server closed the last connection after a refusal
            self._connect()
        assert self.sock is not None
        send_error: Optional[OSError] = None
        try:
            self.sock.settimeout(timeout_s)
            try:
                if payload_file is not None:
                    send_file(self.sock, header, payload_file, size)
                else:
                    send_msg(self.sock, header)
            except OSError as exc:
                send_error = exc  # the server may have refused mid-payload; its reply says why
            reply = recv_msg(self.sock)
        except (OSError, ProtocolError) as exc:
            self.close()
            raise TransportError(f"runner at {self.where} dropped the connection during "
                                 f"{header.get('op')}: {send_error or exc}") from None
        if reply.get("closed") or send_error is not None:
            self.close()
        if not reply.get("ok"):
            raise TransportError(f"runner at {self.where} refused {header.get('op')}: {reply.get('error')}")
        return reply

    def push(self, local: Path, remote: str) -> None:
        with open(local, "rb") as f:
            digest, size = sha256_of(f)
            f.seek(0)
            # generous per-file timeout: 60 s + 1 s per MB (a slow Wi-Fi link moves ~1 MB/s)
            self._call({"op": "push", "path": remote, "size": size, "sha256": digest}, f, size,
                       timeout_s=60 + size / 1e6)

    def pull(self, remote: str, local: Path) -> None:
        reply = self._call({"op": "pull", "path": remote})
        local = Path(local)
        size = reply.get("size")
        try:
            if not isinstance(size, int) or size < 0:
                raise ProtocolError(f"pull reply has no size: {reply}")
            fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", dir=local.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    assert self.sock is not None
                    self.sock.settimeout(60 + size / 1e6)
                    recv_to_file(self.sock, size, f)
                os.replace(tmp, local)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except (OSError, ProtocolError) as exc:
            self.close()
            raise TransportError(f"pull of {remote} from {self.where} broke off: {exc}") from None

    def remove(self, remote: str) -> bool:
        """Delete one file on the device (False: there was none)."""
        return bool(self._call({"op": "remove", "path": remote}).get("removed"))

    def run(self, argv: Sequence[str], timeout_s: float) -> RunResult:
        """``argv`` as the measurement flow builds it (``@native``/``@python``/``@app`` + runner flags),
        sent as the server's structured run request: the server builds the runner's argv itself. ``@app``
        is the edgeprobe Android app's in-process runner (registry.Device checks the server lists it)."""
        try:
            request = request_from_argv(argv, timeout_s)
        except ValueError as exc:
            raise TransportError(f"runner at {self.where}: {exc}") from None
        t0 = time.monotonic()
        r = self._call(request, timeout_s=timeout_s + 30)
        return RunResult(r.get("exit_code"), r.get("stdout", ""), r.get("stderr", ""),
                         float(r.get("duration_s", time.monotonic() - t0)), bool(r.get("timed_out")))

    def info(self) -> dict[str, str]:
        return dict(self._info)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def probe(host: str, port: int, timeout_s: float) -> str:
    """Health of a runner without a token: connect and read its challenge (nothing is sent)."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
            challenge = recv_msg(s, 4096)
    except (OSError, ProtocolError) as exc:
        return f"unreachable: {exc}"
    if challenge.get("op") != "challenge" or challenge.get("service") != SERVICE:
        return "reachable, but not an edgeprobe v2 runner server"
    return "reachable (set EDGEPROBE_TOKEN to check authorization)"


def discover(timeout_s: float = 2.0, interfaces: Optional[Sequence[str]] = None) -> list[dict[str, str]]:
    """Runners advertised over zeroconf: [{name, host, addresses, port, abi, runtimes, version, delegates}]
    (``delegates``: the edgeprobe Android app's ExecuTorch delegates, "" for other servers).

    Anyone on the LAN can advertise any name: an entry proves nothing until a connection to it has
    passed the handshake (``open_by_name``)."""
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
                          "host": info.parsed_addresses()[0], "addresses": ",".join(info.parsed_addresses()),
                          "port": str(info.port),
                          "abi": props.get("abi", ""), "runtimes": props.get("runtimes", ""),
                          "version": props.get("version", ""), "delegates": props.get("delegates", "")})
        browser.cancel()
        return found
    finally:
        zc.close()


def open_by_name(name: str, token: Optional[str], found: Sequence[dict[str, str]]) -> tuple[str, TcpTransport]:
    """Connect to the runner advertised as ``name``: every advertiser of that name, every address,
    in turn, until one proves it holds the token; the others are never sent anything but a MAC."""
    failures: list[str] = []
    for f in found:
        if f["name"] != name:
            continue
        for host in (f.get("addresses") or f["host"]).split(","):
            try:
                return f"tcp:{host}:{f['port']}", TcpTransport(host, int(f["port"]), token)
            except TransportError as exc:
                failures.append(str(exc))
                if not token:
                    raise
    if failures:
        raise TransportError(f"no runner advertised as {name!r} proved it holds the token "
                             f"({len(failures)} tried): {'; '.join(failures)}")
    raise LookupError(name)
