"""The .epv test-vector format shared by every runner."""

from __future__ import annotations

import io
import struct

import pytest

from edgeprobe_runner import vectors as epv


def _sample() -> list[epv.TestSet]:
    x = epv.RawTensor("float32", (1, 2), struct.pack("<2f", 1.0, -2.5))
    y = epv.RawTensor("int64", (3,), struct.pack("<3q", 1, 2, 3))
    s = epv.RawTensor("bool", (), b"\x01")
    return [epv.TestSet((x,), (y, s)), epv.TestSet((), ())]


def test_round_trip():
    buf = io.BytesIO()
    epv.write(buf, _sample())
    assert epv.read_bytes(buf.getvalue()) == _sample()


def test_bad_magic_and_truncation():
    buf = io.BytesIO()
    epv.write(buf, _sample())
    data = buf.getvalue()
    with pytest.raises(epv.VectorsFormatError, match="magic"):
        epv.read_bytes(b"XXXXXXXX" + data[8:])
    for cut in (4, 12, 20, len(data) - 1):
        with pytest.raises(epv.VectorsFormatError, match="truncated|magic"):
            epv.read_bytes(data[:cut])


def test_size_must_match_shape():
    with pytest.raises(epv.VectorsFormatError, match="needs 8 bytes"):
        epv.RawTensor("float32", (2,), b"\x00" * 7)
    with pytest.raises(epv.VectorsFormatError, match="unsupported dtype"):
        epv.RawTensor("complex64", (1,), b"\x00" * 8)
