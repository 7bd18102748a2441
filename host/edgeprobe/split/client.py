"""The host-side client of ``edgeprobe serve`` (split/server.py, whose docstring is the protocol):
load tail programs, run them on activations, profile them, unload them."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
from typing import Any, Optional, Sequence

import torch

from edgeprobe.errors import ConnectionLostError
from edgeprobe_runner import codec
from edgeprobe_runner.wire import ProtocolError, client_handshake, recv_exact, recv_msg, send_msg

SERVICE = "split"


def _number_or_none(x: Any) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


class TailClient:
    """One connection to ``edgeprobe serve``.

    ``run`` returns ``(outputs, server_ms, wire_bytes)``: ``wire_bytes`` is everything this request
    put on the connection, both ways, framing included; ``self.last`` has the parts (``bytes_up``,
    ``bytes_down``, ``payload_up``, ``payload_down``, ``round_trip_ms``, ``server_ms``,
    ``decode_ms``, ``encode_ms`` (the server's), ``network_ms`` = round trip - server parts).

    A request whose connection is lost (reset, timeout, server restarted) is sent again on a new
    connection, up to ``reconnects`` times: every request is idempotent (a load under the same name
    replaces the program). A program loaded before a server restart is gone; the run then says so."""

    def __init__(self, host: str, port: int, token: str, timeout_s: float = 30.0, reconnects: int = 1) -> None:
        from edgeprobe.errors import TransportError

        self._error = TransportError
        self.where = f"{host}:{port}"
        self.last: dict[str, Any] = {}
        self._addr, self._token, self._timeout_s, self.reconnects = (host, int(port)), token, timeout_s, reconnects
        self.sock: Optional[socket.socket] = None
        self.info: dict[str, Any] = self._connect()

    def _connect(self) -> dict[str, Any]:
        try:
            self.sock = socket.create_connection(self._addr, timeout=self._timeout_s)
        except OSError as exc:
            raise self._error(f"cannot connect to edgeprobe serve at {self.where}: {exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:  # the v2 handshake: the token is never sent, and the server must prove it holds it
            return client_handshake(self.sock, self._token, SERVICE, self.where)
        except (OSError, ProtocolError) as exc:
            self.close()
            raise self._error(f"edgeprobe serve at {self.where}: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _request(self, header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any], bytes, int, int]:
        for attempt in range(self.reconnects + 1):
            try:
                if self.sock is None:
                    self.info = self._connect()
                return self._once(header, payload)
            except ConnectionLostError:
                if attempt == self.reconnects:
                    raise
                self.close()
        raise AssertionError("unreachable")

    def _once(self, header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any], bytes, int, int]:
        if payload:
            header = {**header, "size": len(payload)}
        up = 4 + len(json.dumps(header).encode()) + len(payload)
        send_error: Optional[OSError] = None
        try:
            send_msg(self.sock, header, payload)
        except OSError as exc:  # the server may have refused and closed mid-upload: read why
            send_error = exc
        try:
            reply = recv_msg(self.sock)
            data = recv_exact(self.sock, int(reply.get("size", 0))) if reply.get("ok") else b""
        except (OSError, ProtocolError) as exc:
            cause = send_error or exc
            self.close()
            raise ConnectionLostError(f"edgeprobe serve at {self.where}: connection lost during {header.get('op')} "
                                      f"({cause}); payload {len(payload)} bytes, server limit "
                                      f"{getattr(self, 'info', {}).get('max_bytes', 'unknown')}") from None
        down = 4 + len(json.dumps(reply).encode()) + len(data)
        if not reply.get("ok"):
            if send_error is not None or reply.get("closed"):
                self.close()
            raise self._error(f"edgeprobe serve at {self.where} refused {header.get('op')}: {reply.get('error')}")
        return reply, data, up, down

    def load(self, name: str, program: Any) -> dict[str, Any]:
        """Load a tail: an ExportedProgram (saved with torch.export.save here) or its saved bytes."""
        if isinstance(program, torch.export.ExportedProgram):
            buf = io.BytesIO()
            torch.export.save(program, buf)
            data = buf.getvalue()
        else:
            data = bytes(program)
        reply, _, _, _ = self._request({"op": "load", "name": name, "sha256": hashlib.sha256(data).hexdigest()}, data)
        return reply

    def run(self, name: str, tensors: Sequence[torch.Tensor], encoding: str = "fp32", *,
            reply_encoding: str = "fp32") -> tuple[list[torch.Tensor], float, int]:
        t_enc = time.perf_counter_ns()
        payload = codec.encode([t.detach().cpu() for t in tensors], encoding)
        t0 = time.perf_counter_ns()
        reply, data, up, down = self._request(
            {"op": "run", "name": name, "encoding": encoding, "reply_encoding": reply_encoding,
             "size": len(payload)}, payload)
        t1 = time.perf_counter_ns()
        rtt = (t1 - t0) / 1e6
        outputs = list(codec.decode(data))
        t2 = time.perf_counter_ns()
        server_parts = reply["server_ms"] + reply["decode_ms"] + reply["encode_ms"]
        self.last = {"bytes_up": up, "bytes_down": down, "payload_up": len(payload), "payload_down": len(data),
                     "round_trip_ms": rtt, "server_ms": reply["server_ms"], "decode_ms": reply["decode_ms"],
                     "encode_ms": reply["encode_ms"], "handle_ms": _number_or_none(reply.get("handle_ms")),  # not reported: None, never a stand-in
                     "network_ms": rtt - server_parts, "client_encode_ms": (t0 - t_enc) / 1e6,
                     "client_decode_ms": (t2 - t1) / 1e6}
        return outputs, float(reply["server_ms"]), up + down

    def profile(self, name: str, program: Any, inputs: Sequence[torch.Tensor], runs: int = 10
                ) -> tuple[dict[str, float], dict[str, Any]]:
        """Load ``program`` as ``name`` and time each of its nodes on the server: (per-node ms, info)."""
        self.load(name, program)
        reply, _, _, _ = self._request({"op": "profile", "name": name, "runs": int(runs)},
                                       codec.encode([t.detach().cpu() for t in inputs], "fp32"))
        return {k: float(v) for k, v in reply["per_node_ms"].items()}, {"device": reply["device"],
                                                                         "whole_ms": reply["whole_ms"]}

    def unload(self, name: str) -> bool:
        """Free ``name`` on the server; False when it held no such program."""
        reply, _, _, _ = self._request({"op": "unload", "name": name})
        return bool(reply["unloaded"])

    def server_info(self) -> dict[str, Any]:
        reply, _, _, _ = self._request({"op": "info"})
        return reply["info"]

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def __enter__(self) -> "TailClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- CLI ----------------------------------------------------------------------------------------
