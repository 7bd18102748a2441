"""The runner protocol's framing written from the spec (device_runner/PROTOCOL.md), for tests that
play a server or a client by hand: a 4-byte big-endian length, a JSON header, then the payload.
Deliberately not ``edgeprobe_runner.wire``: a test of the real framing must not reuse it."""

from __future__ import annotations

import json
import struct
from typing import Any


def send(sock, header: Any, payload: bytes = b"") -> None:
    """``header``: a JSON-able object, or raw bytes (to send a malformed one)."""
    data = header if isinstance(header, bytes) else json.dumps(header).encode()
    sock.sendall(struct.pack(">I", len(data)) + data + payload)


def recv_exact(sock, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def recv(sock) -> dict:
    (n,) = struct.unpack(">I", recv_exact(sock, 4))
    return json.loads(recv_exact(sock, n))
