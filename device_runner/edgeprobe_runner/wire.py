"""The wire of edgeprobe's two TCP services: framing, the v2 authentication handshake, and the
limits both servers share (``edgeprobe runner serve``: edgeprobe_runner/server.py; ``edgeprobe
serve``: edgeprobe/split/server.py). Written by hand: a dozen lines of framing and one HMAC keep the
device side small. It must not import the host package.

Framing: every message is a 4-byte big-endian length + a UTF-8 JSON object header, optionally
followed by ``size`` raw payload bytes (``size`` being a header field). Payloads are read in chunks
into a file or a buffer that grows only as bytes arrive: a ``size`` claim alone allocates nothing.

Authentication (protocol v2, device_runner/PROTOCOL.md): the server speaks first with
``{"op": "challenge", "auth": "hmac-sha256", "service": S, "nonce": SN}``; the client answers
``{"op": "hello", "nonce": CN, "mac": HMAC(token, "edgeprobe-auth-v1|client|S|SN|CN")}``; the server
replies ``{"ok": true, "mac": HMAC(token, "edgeprobe-auth-v1|server|S|SN|CN"), "info": ...}`` and the
client checks that MAC before it sends anything else. The token never crosses the wire. Before
authentication a header is at most 4096 bytes and the whole handshake has a deadline (10 s).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import socketserver
import struct
import threading
import time
from typing import Any, BinaryIO, Callable, Optional, Union

AUTH = "hmac-sha256"
AUTH_CONTEXT = "edgeprobe-auth-v1"
MAX_PREAUTH_HEADER_BYTES = 4096
DEFAULT_MAX_HEADER_BYTES = 1 << 20
DEFAULT_AUTH_DEADLINE_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 120.0
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_MAX_PREAUTH_PER_ADDRESS = 8
CHUNK = 1 << 16
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ProtocolError(Exception):
    """The peer broke the protocol, went away, or ran past a deadline."""


class AuthError(ProtocolError):
    """Authentication failed: a wrong token, a server that did not prove it holds the token, or a
    peer that is not the expected edgeprobe service."""


# -- framing ------------------------------------------------------------------------------------


def encode_msg(header: dict[str, Any]) -> bytes:
    data = json.dumps(header).encode()
    return struct.pack(">I", len(data)) + data


def send_msg(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    frame = encode_msg(header)
    if len(payload) <= CHUNK:
        sock.sendall(frame + payload)
    else:
        sock.sendall(frame)
        sock.sendall(payload)


def _recv_into(sock: socket.socket, view: memoryview, deadline: Optional[float]) -> int:
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProtocolError("authentication deadline passed")
        sock.settimeout(left)
    try:
        return sock.recv_into(view)
    except socket.timeout:
        if deadline is not None:
            raise ProtocolError("authentication deadline passed") from None
        raise


def recv_exact(sock: socket.socket, n: int, *, deadline: Optional[float] = None) -> bytes:
    """``n`` bytes; the buffer grows only as bytes arrive (a claim of ``n`` allocates nothing).
    ``deadline`` (time.monotonic) bounds the whole read, however slowly the bytes come."""
    buf = bytearray()
    scratch = memoryview(bytearray(min(max(n, 1), CHUNK)))
    while len(buf) < n:
        got = _recv_into(sock, scratch[: min(n - len(buf), len(scratch))], deadline)
        if not got:
            raise ProtocolError(f"connection closed after {len(buf)} of {n} bytes")
        buf += scratch[:got]
    return bytes(buf)


def parse_header(data: bytes) -> dict[str, Any]:
    """A header's bytes as a JSON object, or ProtocolError."""
    try:
        header = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ProtocolError("header is not UTF-8 JSON: nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header is a JSON {type(header).__name__}, not an object")
    return header


def recv_msg(sock: socket.socket, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES, *,
             deadline: Optional[float] = None) -> dict[str, Any]:
    (n,) = struct.unpack(">I", recv_exact(sock, 4, deadline=deadline))
    if n > max_header_bytes:
        raise ProtocolError(f"header of {n} bytes is over the {max_header_bytes}-byte limit")
    return parse_header(recv_exact(sock, n, deadline=deadline))


def recv_to_file(sock: socket.socket, size: int, f: BinaryIO, hasher: Any = None) -> None:
    """Stream ``size`` payload bytes into ``f`` in chunks (and into ``hasher`` when given)."""
    scratch = memoryview(bytearray(CHUNK))
    left = size
    while left:
        got = sock.recv_into(scratch[: min(left, CHUNK)])
        if not got:
            raise ProtocolError(f"connection closed with {left} of {size} payload bytes unsent")
        f.write(scratch[:got])
        if hasher is not None:
            hasher.update(scratch[:got])
        left -= got


def recv_payload(sock: socket.socket, size: int) -> bytearray:
    """``size`` payload bytes into a buffer that grows only as they arrive (in chunks)."""
    buf = bytearray()
    scratch = memoryview(bytearray(min(max(size, 1), CHUNK)))
    while len(buf) < size:
        got = sock.recv_into(scratch[: min(size - len(buf), len(scratch))])
        if not got:
            raise ProtocolError(f"connection closed after {len(buf)} of {size} payload bytes")
        buf += scratch[:got]
    return buf


def close_after_refusal(sock: socket.socket, drain_bytes: int = 1 << 20, drain_s: float = 0.5) -> None:
    """After a refusal whose payload was not read: stop sending, and read (and drop) a bounded
    amount of what the client is still sending, so that its kernel does not reset the connection
    before it has read the refusal."""
    try:
        sock.shutdown(socket.SHUT_WR)
        end = time.monotonic() + drain_s
        left = drain_bytes
        while left > 0:
            t = end - time.monotonic()
            if t <= 0:
                break
            sock.settimeout(t)
            chunk = sock.recv(min(left, CHUNK))
            if not chunk:
                break
            left -= len(chunk)
    except OSError:
        pass


def discard(sock: socket.socket, size: int) -> None:
    """Read and drop ``size`` payload bytes (a refused push keeps the connection in sync)."""
    scratch = memoryview(bytearray(min(max(size, 1), CHUNK)))
    left = size
    while left:
        got = sock.recv_into(scratch[: min(left, len(scratch))])
        if not got:
            raise ProtocolError(f"connection closed with {left} of {size} payload bytes unsent")
        left -= got


def send_file(sock: socket.socket, header: dict[str, Any], f: BinaryIO, size: int) -> None:
    """``header`` then exactly ``size`` bytes of ``f``, in chunks (never the whole file in memory)."""
    sock.sendall(encode_msg(header))
    left = size
    while left:
        chunk = f.read(min(left, CHUNK))
        if not chunk:
            raise ProtocolError(f"file ended with {left} of {size} bytes unsent")
        sock.sendall(chunk)
        left -= len(chunk)


def sha256_of(f: BinaryIO) -> tuple[str, int]:
    """(hex sha256, size) of a file read in chunks from its current position."""
    h, n = hashlib.sha256(), 0
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return h.hexdigest(), n
        h.update(chunk)
        n += len(chunk)


# -- the v2 handshake ---------------------------------------------------------------------------


def new_nonce() -> str:
    return secrets.token_hex(32)


def auth_mac(token: str, role: str, service: str, server_nonce: str, client_nonce: str) -> str:
    msg = f"{AUTH_CONTEXT}|{role}|{service}|{server_nonce}|{client_nonce}"
    return hmac.new(token.encode(), msg.encode(), hashlib.sha256).hexdigest()


def _mac_equal(got: Any, want: str) -> bool:
    return isinstance(got, str) and hmac.compare_digest(got.encode(), want.encode())


def _refuse(sock: socket.socket, error: str) -> None:
    """A last one-line error frame before closing; never blocks for long."""
    try:
        sock.settimeout(1.0)
        sock.sendall(encode_msg({"ok": False, "closed": True, "error": error}))
    except OSError:
        return
    close_after_refusal(sock, 1 << 16, 0.2)


def server_handshake(sock: socket.socket, token: str, service: str, info: Callable[[], dict[str, Any]], *,
                     deadline_s: float = DEFAULT_AUTH_DEADLINE_S) -> None:
    """The server's side: challenge, check the client's MAC, prove our own. On failure the client
    is told why in one line and AuthError is raised (the caller closes the connection)."""
    deadline = time.monotonic() + deadline_s
    server_nonce = new_nonce()
    sock.settimeout(deadline_s)
    send_msg(sock, {"op": "challenge", "auth": AUTH, "service": service, "nonce": server_nonce})
    try:
        hello = recv_msg(sock, MAX_PREAUTH_HEADER_BYTES, deadline=deadline)
    except ProtocolError as exc:
        _refuse(sock, f"unauthorized: {exc} (answer the challenge with hello {{nonce, mac}} within {deadline_s:g} s)")
        raise AuthError(str(exc)) from None
    client_nonce = hello.get("nonce")
    if hello.get("op") != "hello" or not isinstance(client_nonce, str) or not _HEX64.fullmatch(client_nonce):
        _refuse(sock, "unauthorized: the first message must be hello {nonce: 64 hex digits, mac} "
                      "(edgeprobe protocol v2: the server speaks first); closing")
        raise AuthError("no valid hello")
    if not _mac_equal(hello.get("mac"), auth_mac(token, "client", service, server_nonce, client_nonce)):
        _refuse(sock, "unauthorized: wrong token")
        raise AuthError("wrong token")
    send_msg(sock, {"ok": True, "mac": auth_mac(token, "server", service, server_nonce, client_nonce),
                    "info": info()})


def client_handshake(sock: socket.socket, token: str, service: str, where: str) -> dict[str, Any]:
    """The client's side; returns the server's info. Raises AuthError when the server refuses, is
    not the expected service, or does not prove it holds the token (then nothing else was sent)."""
    challenge = recv_msg(sock, MAX_PREAUTH_HEADER_BYTES)
    if challenge.get("op") != "challenge":
        if challenge.get("ok") is False:
            raise AuthError(f"{where} refused the connection: {challenge.get('error')}")
        raise AuthError(f"{where} did not send an edgeprobe v2 challenge; is it an older edgeprobe "
                        "(upgrade both sides) or not an edgeprobe server?")
    if challenge.get("service") != service:
        raise AuthError(f"{where} is an edgeprobe {challenge.get('service')!r} server, not the {service!r} one; "
                        "check the address")
    if challenge.get("auth") != AUTH:
        raise AuthError(f"{where} asks for authentication {challenge.get('auth')!r}; only {AUTH} is spoken here")
    server_nonce = challenge.get("nonce")
    if not isinstance(server_nonce, str) or not _HEX64.fullmatch(server_nonce):
        raise AuthError(f"{where} sent a malformed challenge nonce; not talking to it")
    client_nonce = new_nonce()
    send_msg(sock, {"op": "hello", "nonce": client_nonce,
                    "mac": auth_mac(token, "client", service, server_nonce, client_nonce)})
    reply = recv_msg(sock)
    if not reply.get("ok"):
        raise AuthError(f"{where} refused the connection: {reply.get('error')}")
    if not _mac_equal(reply.get("mac"), auth_mac(token, "server", service, server_nonce, client_nonce)):
        raise AuthError(f"the server at {where} did not prove it holds the token; not talking to it")
    info = reply.get("info")
    return info if isinstance(info, dict) else {}


# -- limits shared by both servers --------------------------------------------------------------


class Budget:
    """Bytes that may be in flight at once across all connections: reserve before receiving."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0
        self._lock = threading.Lock()

    def reserve(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.total:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used -= n


class BoundedServer(socketserver.ThreadingTCPServer):
    """A threading TCP server with a connection cap, a cap on connections per address that have not
    authenticated yet, the v2 handshake under a deadline, and an idle timeout after it. A refused
    connection gets one line (``{"ok": false, "closed": true, "error": "busy: ..."}``) and is closed;
    the server goes on serving the others. Subclasses set ``service`` and implement ``info`` and
    ``serve_connection`` (called after authentication)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    service = ""

    def __init__(self, addr: tuple[str, int], *, token: str, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_preauth_per_address: int = DEFAULT_MAX_PREAUTH_PER_ADDRESS,
                 auth_deadline_s: float = DEFAULT_AUTH_DEADLINE_S,
                 idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S) -> None:
        if not token:
            raise ValueError("a server needs a non-empty token")
        self.token = token
        self.max_connections, self.max_preauth_per_address = max_connections, max_preauth_per_address
        self.auth_deadline_s, self.idle_timeout_s = auth_deadline_s, idle_timeout_s
        self._conn_lock = threading.Lock()
        self.connections = 0
        self._preauth: dict[str, int] = {}
        self._authed: set[int] = set()  # id() of the requests that authenticated
        super().__init__(addr, _BoundedHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    # The two hooks each server defines (RunnerServer, TailServer); this base holds only the limits.
    def info(self) -> dict[str, Any]:
        """What the handshake's reply carries as ``info``."""
        raise NotImplementedError(f"{type(self).__name__} must define info()")

    def serve_connection(self, sock: socket.socket) -> None:
        """Serve one authenticated connection's requests until it closes."""
        raise NotImplementedError(f"{type(self).__name__} must define serve_connection()")

    def _admit(self, address: str) -> Optional[str]:
        with self._conn_lock:
            if self.connections >= self.max_connections:
                return (f"busy: this server already has {self.max_connections} connections (its connection cap); "
                        "try again later")
            if self._preauth.get(address, 0) >= self.max_preauth_per_address:
                return (f"busy: {address} already has {self.max_preauth_per_address} connections that have not "
                        "authenticated; try again later")
            self.connections += 1
            self._preauth[address] = self._preauth.get(address, 0) + 1
            return None

    def _authenticated(self, request: Any, address: str) -> None:
        with self._conn_lock:
            self._authed.add(id(request))
            self._drop_preauth(address)

    def _drop_preauth(self, address: str) -> None:
        n = self._preauth.get(address, 0) - 1
        if n > 0:
            self._preauth[address] = n
        else:
            self._preauth.pop(address, None)

    def process_request(self, request: Any, client_address: Any) -> None:
        why = self._admit(client_address[0])
        if why is not None:
            try:
                request.setblocking(False)  # a fresh connection's send buffer is empty: this never waits
                request.send(encode_msg({"ok": False, "closed": True, "error": why}))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request, client_address)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request, client_address)

    def _release(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self.connections -= 1
            if id(request) in self._authed:
                self._authed.discard(id(request))
            else:
                self._drop_preauth(client_address[0])


class _BoundedHandler(socketserver.BaseRequestHandler):
    server: BoundedServer

    def handle(self) -> None:
        sock, srv = self.request, self.server
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server_handshake(sock, srv.token, srv.service, srv.info, deadline_s=srv.auth_deadline_s)
        except (OSError, ProtocolError):
            return
        srv._authenticated(sock, self.client_address[0])
        sock.settimeout(srv.idle_timeout_s)
        try:
            srv.serve_connection(sock)
        except (OSError, ProtocolError):
            return  # timeout, reset, or the client went away mid-frame


def serve_until_stopped(server: socketserver.BaseServer) -> None:
    """Serve in a thread until SIGTERM or Ctrl-C, then shut the server down and close it."""
    import signal

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


def read_token_file(path: Union[str, os.PathLike]) -> str:
    """A token from a file (its first line, stripped); ValueError when it is empty."""
    with open(path, encoding="utf-8") as f:
        token = f.readline().strip()
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


def add_server_args(p: argparse.ArgumentParser, token_env: str, max_inflight_bytes: int) -> None:
    """The command-line options both servers share: their token and the limits of BoundedServer."""
    p.add_argument("--token", default=None,
                   help=f"clients must prove they hold it (default: --token-file, else ${token_env}, else a "
                        "random one, printed); on the command line it is visible to other users of this machine")
    p.add_argument("--token-file", default=None, help="read the token from this file's first line")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    p.add_argument("--auth-timeout-s", type=float, default=DEFAULT_AUTH_DEADLINE_S,
                   help="a connection must authenticate within this many seconds")
    p.add_argument("--max-inflight-bytes", type=int, default=max_inflight_bytes,
                   help="payload bytes being received at once, over all connections")


def server_token(p: argparse.ArgumentParser, args: argparse.Namespace, token_env: str) -> str:
    """--token, else --token-file, else ``$token_env``, else a random one (the caller prints it)."""
    try:
        return args.token or (read_token_file(args.token_file) if args.token_file else None) \
            or os.environ.get(token_env) or secrets.token_urlsafe(16)
    except (OSError, ValueError) as exc:
        p.error(f"--token-file: {exc}")
        raise  # p.error exits; for the type checker
