"""Test vectors (.epv): inputs and expected outputs, read by every runner flavor.

Format in ../PROTOCOL.md. Hand-written because the executorch wheel ships no C++
``bundled_program`` library, so the native runner could not read a BundledProgram. Pure Python
(struct), no torch, so the host can write it and any runner can read it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Sequence

MAGIC = b"EPVEC001"

# ExecuTorch ScalarType codes <-> dtype names (torch names without the "torch." prefix).
DTYPE_CODES = {
    "uint8": 0, "int8": 1, "int16": 2, "int32": 3, "int64": 4, "float16": 5,
    "float32": 6, "float64": 7, "bool": 11, "bfloat16": 15,
}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
ITEM_BYTES = {"uint8": 1, "int8": 1, "int16": 2, "int32": 4, "int64": 8, "float16": 2,
              "float32": 4, "float64": 8, "bool": 1, "bfloat16": 2}


class VectorsFormatError(ValueError):
    """The file is not a valid .epv (wrong magic, truncated, inconsistent sizes)."""


@dataclass(frozen=True)
class RawTensor:
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_CODES:
            raise VectorsFormatError(f"unsupported dtype {self.dtype!r}")
        n = 1
        for d in self.shape:
            if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d < 2 ** 63:
                raise VectorsFormatError(f"bad tensor size {d!r} in shape {list(self.shape)} (sizes are int64 >= 0)")
            n *= d
        if n * ITEM_BYTES[self.dtype] != len(self.data):
            raise VectorsFormatError(
                f"tensor {self.dtype}{list(self.shape)} needs {n * ITEM_BYTES[self.dtype]} bytes, has {len(self.data)}"
            )


@dataclass(frozen=True)
class TestSet:
    inputs: tuple[RawTensor, ...]
    expected: tuple[RawTensor, ...]

    __test__ = False  # not a pytest class


def _write_tensor(f: BinaryIO, t: RawTensor) -> None:
    f.write(struct.pack("<II", DTYPE_CODES[t.dtype], len(t.shape)))
    f.write(struct.pack(f"<{len(t.shape)}q", *t.shape))
    f.write(struct.pack("<Q", len(t.data)))
    f.write(t.data)


def write(f: BinaryIO, testsets: Sequence[TestSet]) -> None:
    f.write(MAGIC)
    f.write(struct.pack("<I", len(testsets)))
    for ts in testsets:
        f.write(struct.pack("<I", len(ts.inputs)))
        for t in ts.inputs:
            _write_tensor(f, t)
        f.write(struct.pack("<I", len(ts.expected)))
        for t in ts.expected:
            _write_tensor(f, t)


_MIN_TENSOR_BYTES = 16  # u32 dtype, u32 ndim, u64 nbytes (a rank-0 tensor with no data)
_MIN_TESTSET_BYTES = 8  # u32 num_inputs, u32 num_outputs


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise VectorsFormatError(f"truncated: needs {n} bytes at offset {self.pos}, file has {len(self.data)}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def tensor(self) -> RawTensor:
        code, ndim = self.unpack("<II")
        if code not in CODE_DTYPES:
            raise VectorsFormatError(f"unknown dtype code {code}")
        if ndim > 16:
            raise VectorsFormatError(f"implausible rank {ndim}")
        shape = self.unpack(f"<{ndim}q") if ndim else ()
        if any(d < 0 for d in shape):
            raise VectorsFormatError(f"negative tensor size in shape {list(shape)} at offset {self.pos}")
        (nbytes,) = self.unpack("<Q")
        return RawTensor(CODE_DTYPES[code], tuple(shape), self.take(nbytes))

    def count(self, what: str, min_bytes_each: int) -> int:
        """A u32 count, refused when the bytes left cannot hold that many ``what`` (each at least
        ``min_bytes_each`` bytes), so a count of 2^32 is an error at once, not a long loop."""
        (n,) = self.unpack("<I")
        left = len(self.data) - self.pos
        if n * min_bytes_each > left:
            raise VectorsFormatError(f"truncated: {n} {what} at offset {self.pos - 4} need at least "
                                     f"{n * min_bytes_each} bytes, {left} left")
        return n


def read_bytes(data: bytes) -> list[TestSet]:
    """The test sets of one .epv; anything else raises ``VectorsFormatError`` (one line), without
    allocating more than the input's size for any count or size the file claims."""
    r = _Reader(bytes(data))
    if r.take(len(MAGIC)) != MAGIC:
        raise VectorsFormatError("not an edgeprobe vectors file (bad magic)")
    sets = []
    for _ in range(r.count("test sets", _MIN_TESTSET_BYTES)):
        inputs = tuple(r.tensor() for _ in range(r.count("inputs", _MIN_TENSOR_BYTES)))
        expected = tuple(r.tensor() for _ in range(r.count("outputs", _MIN_TENSOR_BYTES)))
        sets.append(TestSet(inputs, expected))
    if r.pos != len(data):
        raise VectorsFormatError(f"{len(data) - r.pos} trailing bytes after the last test set (offset {r.pos})")
    return sets


def read(path: str) -> list[TestSet]:
    with open(path, "rb") as f:
        return read_bytes(f.read())
