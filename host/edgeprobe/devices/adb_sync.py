"""edgeprobe's ADB push loop over TCP (on adb-shell's connection, stream ids and packet reader):
why it exists and what it changes is written at the top of the code below."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence


# --------------------------------------------------------------------------- push over TCP
#
# Why edgeprobe has its own push loop (on adb-shell's connection, stream ids and packet reader):
# profiling adb-shell 0.4.4's AdbDevice.push (50 MB to the test adbd, cProfile) put ~70 % of the
# time in the ADB packet checksum, ``sum(data)`` over every payload byte in Python (~10 ms per MiB,
# a ceiling of ~100 MB/s on its own), the rest in copying 64 KiB chunks into a send buffer, slicing
# it and sending header and payload in separate calls. Its TCP ``bulk_write`` also sends once on a
# non-blocking socket and ignores how much was taken, so a payload larger than the free socket buffer
# could be cut short. The loop below keeps the protocol as adb-shell negotiates it (version
# 0x01000000: checksums required, one outstanding WRTE per stream, i.e. wait for the device's OKAY
# before the next WRTE; no pipelining, that needs the ``delayed_ack`` feature which neither side
# offers) and changes only how the bytes get there:
#   * the checksum is summed by numpy (~0.3 ms per MiB);
#   * each WRTE carries a full maxdata payload: the sync stream (SEND, DATA chunks of at most 64 KiB
#     as adbd requires, DONE) is cut at maxdata boundaries, a DATA chunk may span two WRTEs (the sync
#     service reads a byte stream; the real adb server cuts it the same way);
#   * file bytes are read straight into the payload buffer (readinto), header + payload go out in one
#     ``sendmsg`` that loops until everything is sent;
#   * while the device works on one payload and its OKAY is awaited, the next one is read and summed
#     (two buffers), which the protocol allows since nothing is sent before the OKAY.
# Reading packets (OKAY/CLSE/WRTE) still goes through adb-shell's I/O manager, so its stream
# bookkeeping, its locks and the empty-read-is-a-reset wrapper of ``_nodelay`` apply. ADB over USB
# (no phone can be attached here to prove a change) keeps adb-shell's own push.

SYNC_DATA_MAX = 64 * 1024  # the most file bytes in one sync DATA chunk that adbd accepts


def _byte_sum(data: memoryview) -> int:
    """The ADB packet checksum (sum of the payload bytes mod 2**32), in numpy."""
    import numpy as np

    return int(np.add.reduce(np.frombuffer(data, np.uint8), dtype=np.uint64)) & 0xFFFFFFFF


def _sendall(conn: socket.socket, buffers: Sequence[Any], timeout_s: Optional[float], target: str) -> None:
    """``sendmsg`` until every byte is out; works on adb-shell's non-blocking socket."""
    import select

    from adb_shell.exceptions import TcpTimeoutException

    views = [memoryview(b).cast("B") for b in buffers]
    views = [v for v in views if len(v)]
    while views:
        try:
            sent = conn.sendmsg(views)
        except (BlockingIOError, InterruptedError):
            sent = 0
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0
        if views:
            _, writable, _ = select.select([], [conn], [], timeout_s)
            if not writable:
                raise TcpTimeoutException(f"sending to {target} timed out after {timeout_s} s")


class _SyncStream:
    """The sync SEND request for one file, cut into WRTE payloads of ``payload_max`` bytes."""

    def __init__(self, f: Any, size: int, device_path: str, st_mode: int, mtime: int) -> None:
        header = f"{device_path},{st_mode}".encode()
        self._f, self._file_left, self._mtime = f, size, mtime
        self._pending = struct.pack("<4sI", b"SEND", len(header)) + header  # protocol bytes not yet placed
        self._chunk_left = 0  # file bytes of the current DATA chunk not yet placed
        self._done_queued = False

    def fill(self, buf: bytearray) -> tuple[int, int]:
        """Fill ``buf`` with the next payload; returns (payload bytes, file bytes in it); (0, 0) at the end."""
        mv, n, file_bytes, cap = memoryview(buf), 0, 0, len(buf)
        while n < cap:
            if self._pending:
                k = min(len(self._pending), cap - n)
                mv[n:n + k] = self._pending[:k]
                self._pending, n = self._pending[k:], n + k
            elif self._chunk_left:
                k = self._f.readinto(mv[n:n + min(self._chunk_left, cap - n)])
                if not k:
                    raise OSError("the local file shrank while it was being pushed")
                self._chunk_left -= k
                n, file_bytes = n + k, file_bytes + k
            elif self._file_left:
                self._chunk_left = min(SYNC_DATA_MAX, self._file_left)
                self._file_left -= self._chunk_left
                self._pending = struct.pack("<4sI", b"DATA", self._chunk_left)
            elif not self._done_queued:
                self._done_queued = True
                self._pending = struct.pack("<4sI", b"DONE", self._mtime)  # DONE's size field is the mtime
            else:
                break
        return n, file_bytes


def _push_tcp(dev: Any, conn: socket.socket, local: Path, device_path: str, target: str, read_timeout_s: float,
              progress: Optional[Callable[[int, int], None]] = None) -> None:
    """adb-shell's ``AdbDevice.push`` (one file, sync SEND), faster; see the comment above."""
    from adb_shell import constants, exceptions
    from adb_shell.adb_message import AdbMessage
    from adb_shell.hidden_helpers import _FileSyncTransactionInfo

    io = dev._io_manager
    wrte = constants.ID_TO_WIRE[constants.WRTE]
    payload_max = min(int(dev._maxdata) or constants.MAX_LEGACY_ADB_DATA, constants.MAX_ADB_DATA)  # the device's limit
    with open(local, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        stream = _SyncStream(f, size, device_path, constants.DEFAULT_PUSH_MODE, int(time.time()))
        adb_info = dev._open(b"sync:", None, read_timeout_s, None)

        def failed(reason: str) -> Exception:
            try:  # close our end of the stream so that the connection stays usable
                io.send(AdbMessage(constants.CLSE, adb_info.local_id, adb_info.remote_id), adb_info)
            except Exception:  # noqa: BLE001
                pass
            return exceptions.PushFailedError(reason)

        bufs = (bytearray(payload_max), bytearray(payload_max))
        n, file_bytes = stream.fill(bufs[0])
        crc, which, done = _byte_sum(memoryview(bufs[0])[:n]), 0, 0
        while n:
            header = struct.pack("<6I", wrte, adb_info.local_id, adb_info.remote_id, n, crc, wrte ^ 0xFFFFFFFF)
            with io._transport_lock:
                _sendall(conn, (header, memoryview(bufs[which])[:n]), adb_info.transport_timeout_s, target)
            next_n, next_file_bytes = stream.fill(bufs[1 - which])  # overlaps with the device's work
            next_crc = _byte_sum(memoryview(bufs[1 - which])[:next_n]) if next_n else 0
            cmd, _, _, data = io.read([constants.OKAY, constants.CLSE, constants.WRTE], adb_info, allow_zeros=True)
            if cmd == constants.CLSE:
                raise failed(f"the device closed the sync stream after {done} of {size} bytes")
            if cmd == constants.WRTE:  # the device answers before DONE only to fail (sync FAIL + reason)
                dev._okay(adb_info)
                reason = bytes(data[8:]).decode("utf-8", "replace") if data[:4] == b"FAIL" else repr(bytes(data[:64]))
                raise failed(reason)
            done += file_bytes
            if progress and file_bytes:
                progress(done, size)
            n, file_bytes, crc, which = next_n, next_file_bytes, next_crc, 1 - which
        filesync_info = _FileSyncTransactionInfo(constants.FILESYNC_PUSH_FORMAT, maxdata=dev._maxdata)
        for cmd_id, _, data in dev._filesync_read_until([], [constants.OKAY, constants.FAIL], adb_info, filesync_info):
            if cmd_id != constants.OKAY:
                raise failed(bytes(data).decode("utf-8", "replace"))
            break
    dev._clse(adb_info)
