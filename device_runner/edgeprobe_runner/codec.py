"""Wire encoding of the tensors that cross a split (device head -> server tail, and back).

Device side: never imports the host package ``edgeprobe``.

Frame layout (all integers little-endian)::

    b"EPW1"                  magic, 4 bytes
    u32 header_len           length of the header in bytes
    header                   UTF-8 JSON, padded with spaces to header_len
    payload_0 ... payload_n  raw little-endian bytes, one per tensor, in header order, no gaps

The header is ``{"tensors": [{"dtype", "shape", "encoding", "scale", "zero_point", "nbytes"}, ...]}``
where ``dtype`` is the tensor's own dtype (what ``decode`` returns), ``encoding`` is what the
payload holds:

* ``raw``:  the tensor's own bytes (``fp32`` asks for this for every tensor);
* ``fp16``: float16 (only float32 tensors; others stay raw). Values beyond float16's range saturate
  to +-65504;
* ``int8``: per-tensor affine ``x ~= (q - zero_point) * scale``, q in [-128, 127], scale and
  zero_point from the tensor's min/max (range widened to hold 0, so zeros are exact), only for
  floating tensors (integer and bool tensors stay raw). ``scale`` is a float32 value.

``scale``/``zero_point`` are ``null`` unless the encoding is ``int8``. The header is padded to the
width it has with the widest possible scale and zero-point texts, so the frame size depends only on
the shapes, dtypes and encodings: ``encoded_bytes`` gives it without the data, exactly.
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Any, Iterable, Sequence, Union

import torch

MAGIC = b"EPW1"
ENCODINGS = ("fp32", "fp16", "int8")
FP16_MAX = 65504.0

_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}
_ITEM = {name: torch.empty((), dtype=dt).element_size() for name, dt in _DTYPES.items()}
# widest texts json.dumps can write for a scale (a positive finite double) and an int8 zero point
_WIDEST_SCALE = -2.2250738585072014e-308
_WIDEST_ZP = -128

Encoding = Union[str, Sequence[str]]
ShapeDtype = Any  # (shape, dtype) pair, or anything with .shape and .dtype


class CodecError(ValueError):
    """A frame that is not a valid encoding (bad magic, inconsistent header, truncated payload)."""


def _dtype_name(dtype: Union[torch.dtype, str]) -> str:
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    name = name.removeprefix("torch.")
    if name not in _DTYPES:
        raise CodecError(f"unsupported dtype {_short(name)} (supported: {', '.join(_DTYPES)})")
    return name


def _effective(dtype: str, encoding: str) -> str:
    """What the payload of a ``dtype`` tensor holds when ``encoding`` is asked for."""
    if encoding not in ENCODINGS:
        raise CodecError(f"unknown encoding {encoding!r} (one of {', '.join(ENCODINGS)})")
    if encoding == "fp16" and dtype == "float32":
        return "fp16"
    if encoding == "int8" and _DTYPES[dtype].is_floating_point:
        return "int8"
    return "raw"


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def payload_bytes(shape: Sequence[int], dtype: Union[torch.dtype, str], encoding: str) -> int:
    """Bytes of one tensor's payload (without the frame's header)."""
    name = _dtype_name(dtype)
    eff = _effective(name, encoding)
    item = {"fp16": 2, "int8": 1}.get(eff, _ITEM[name])
    return _numel(shape) * item


def _per_tensor(encoding: Encoding, n: int) -> list[str]:
    if isinstance(encoding, str):
        return [encoding] * n
    enc = list(encoding)
    if len(enc) != n:
        raise CodecError(f"{len(enc)} encodings for {n} tensors")
    return enc


def _shape_dtype(item: ShapeDtype) -> tuple[tuple[int, ...], str]:
    if hasattr(item, "shape") and hasattr(item, "dtype"):
        return tuple(int(d) for d in item.shape), _dtype_name(item.dtype)
    shape, dtype = item
    return tuple(int(d) for d in shape), _dtype_name(dtype)


def _header_text(entries: list[dict]) -> bytes:
    return json.dumps({"tensors": entries}, separators=(",", ":")).encode()


def _capacity(specs: list[tuple[tuple[int, ...], str, str]]) -> int:
    """Header width for these (shape, dtype, effective encoding): with the widest scale/zp texts."""
    entries = [{"dtype": d, "shape": list(s), "encoding": e,
                "scale": _WIDEST_SCALE if e == "int8" else None,
                "zero_point": _WIDEST_ZP if e == "int8" else None,
                "nbytes": _numel(s) * {"fp16": 2, "int8": 1}.get(e, _ITEM[d])} for s, d, e in specs]
    return len(_header_text(entries))


def encoded_bytes(shapes_dtypes: Iterable[ShapeDtype], encoding: Encoding) -> int:
    """Exact ``len(encode(tensors, encoding))`` for tensors of these shapes and dtypes."""
    items = [_shape_dtype(x) for x in shapes_dtypes]
    encs = _per_tensor(encoding, len(items))
    specs = [(s, d, _effective(d, e)) for (s, d), e in zip(items, encs)]
    return len(MAGIC) + 4 + _capacity(specs) + sum(payload_bytes(s, d, e) for (s, d), e in zip(items, encs))


def _le_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().contiguous().cpu().reshape(-1)
    if flat.numel() == 0:
        return b""
    if sys.byteorder != "little" and flat.element_size() > 1:  # pragma: no cover - big-endian hosts
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
        return flat.view(ints).numpy().byteswap().tobytes()
    return flat.view(torch.uint8).numpy().tobytes()


def _from_le(buf: memoryview, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if _numel(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    t = torch.frombuffer(bytearray(buf), dtype=torch.uint8).view(dtype)
    if sys.byteorder != "little" and t.element_size() > 1:  # pragma: no cover - big-endian hosts
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        t = torch.from_numpy(t.view(ints).numpy().byteswap().copy()).view(dtype)
    return t.reshape(shape)


def quantize_int8(t: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Per-tensor asymmetric int8: (q, scale, zero_point) with x ~= (q - zero_point) * scale."""
    x = t.detach().to(torch.float32)
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=torch.int8), 1.0, 0
    lo = min(float(x.min()), 0.0)
    hi = max(float(x.max()), 0.0)
    if not (torch.isfinite(torch.tensor([lo, hi])).all()):
        raise CodecError("int8 encoding needs finite values (the tensor holds inf or nan)")
    scale = float(torch.tensor((hi - lo) / 255.0, dtype=torch.float32))
    if scale == 0.0:  # all zeros
        scale = 1.0
    zp = int(round(-128.0 - lo / scale))
    zp = max(-128, min(127, zp))
    q = torch.clamp(torch.round(x / scale) + zp, -128, 127).to(torch.int8)
    return q, scale, zp


def dequantize_int8(q: torch.Tensor, scale: float, zero_point: int, dtype: torch.dtype) -> torch.Tensor:
    s = torch.tensor(scale, dtype=torch.float32)
    return ((q.to(torch.float32) - float(zero_point)) * s).to(dtype)


def encode(tensors: Sequence[torch.Tensor], encoding: Encoding = "fp32") -> bytes:
    """One frame holding ``tensors`` (``encoding``: one for all, or one per tensor)."""
    tensors = list(tensors)
    encs = _per_tensor(encoding, len(tensors))
    entries: list[dict] = []
    payloads: list[bytes] = []
    specs = []
    for t, enc in zip(tensors, encs):
        if not isinstance(t, torch.Tensor):
            raise CodecError(f"cannot encode {type(t).__name__}; only tensors")
        name = _dtype_name(t.dtype)
        eff = _effective(name, enc)
        scale = zp = None
        if eff == "fp16":
            data = _le_bytes(t.detach().clamp(-FP16_MAX, FP16_MAX).to(torch.float16))
        elif eff == "int8":
            q, scale, zp = quantize_int8(t)
            data = _le_bytes(q)
        else:
            data = _le_bytes(t)
        shape = tuple(int(d) for d in t.shape)
        entries.append({"dtype": name, "shape": list(shape), "encoding": eff, "scale": scale,
                        "zero_point": zp, "nbytes": len(data)})
        payloads.append(data)
        specs.append((shape, name, eff))
    header = _header_text(entries)
    cap = _capacity(specs)
    assert len(header) <= cap, (len(header), cap)
    header += b" " * (cap - len(header))
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *payloads])


MAX_RANK = 64  # a frame's tensors have at most this many dimensions
_INT64_MAX = 2 ** 63 - 1
_FLOAT32_MAX = 3.4028234663852886e38


def _short(value: Any, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters: an error message stays one short line."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_shape(shape: Any) -> tuple[int, ...]:
    """A header's shape: a list of at most MAX_RANK int64 sizes >= 0 whose product (zeros left
    out, as torch computes strides) fits in int64."""
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_int(d) and d >= 0 for d in shape):
        raise CodecError(f"bad shape {_short(shape)} (a list of at most {MAX_RANK} integers >= 0)")
    n = 1
    for d in shape:
        n *= max(d, 1)
        if n > _INT64_MAX:
            raise CodecError(f"shape {_short(shape)} overflows int64")
    return tuple(shape)


def decode(data: Union[bytes, bytearray, memoryview]) -> list[torch.Tensor]:
    """The tensors of one frame, in their own dtypes (lossy encodings decoded back).

    Anything that is not a valid frame raises ``CodecError`` with a one-line message; no size the
    header claims is allocated before the payload holding it is known to be there."""
    buf = memoryview(data)
    if len(buf) < 8 or bytes(buf[:4]) != MAGIC:
        raise CodecError("not an edgeprobe tensor frame (bad magic)")
    (hlen,) = struct.unpack("<I", buf[4:8])
    if 8 + hlen > len(buf):
        raise CodecError(f"frame truncated: header of {hlen} bytes, {len(buf) - 8} available")
    try:
        header = json.loads(bytes(buf[8:8 + hlen]).decode())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise CodecError(f"unreadable frame header: {_first_line(exc)}") from None
    entries = header.get("tensors") if isinstance(header, dict) else None
    if not isinstance(entries, list):
        raise CodecError('frame header is not {"tensors": [...]}')
    out: list[torch.Tensor] = []
    pos = 8 + hlen
    for i, e in enumerate(entries):
        try:
            if not isinstance(e, dict):
                raise CodecError(f"header entry is {type(e).__name__}, not an object")
            missing = [k for k in ("dtype", "shape", "encoding", "nbytes") if k not in e]
            if missing:
                raise CodecError(f"header entry lacks {', '.join(missing)}")
            if not isinstance(e["dtype"], str):
                raise CodecError(f"dtype {_short(e['dtype'])} is not a string")
            name = _dtype_name(e["dtype"])
            shape = _check_shape(e["shape"])
            eff = e["encoding"]
            nbytes = e["nbytes"]
            if not isinstance(eff, str) or eff not in ("raw", "fp16", "int8") \
                    or (eff != "raw" and _effective(name, eff) != eff):
                raise CodecError(f"encoding {_short(eff)} does not apply to {name}")
            item = {"fp16": 2, "int8": 1}.get(eff, _ITEM[name])
            if not _is_int(nbytes) or nbytes != _numel(shape) * item:
                raise CodecError(f"nbytes {_short(nbytes)} does not match {name}{_short(list(shape))} as {eff}")
            scale = zp = None
            if eff == "int8":
                scale, zp = e.get("scale"), e.get("zero_point")
                ok_scale = isinstance(scale, (int, float)) and not isinstance(scale, bool) \
                    and 0 < scale <= _FLOAT32_MAX
                if not ok_scale or not _is_int(zp) or not -128 <= zp <= 127:
                    raise CodecError(f"bad int8 scale/zero_point {_short(scale)}/{_short(zp)} (scale a finite "
                                     "float32 > 0, zero_point in -128..127)")
        except CodecError as exc:
            raise CodecError(f"tensor {i}: {exc}") from None
        if pos + nbytes > len(buf):
            raise CodecError(f"frame truncated in tensor {i}: needs {nbytes} bytes, {len(buf) - pos} left")
        chunk = buf[pos:pos + nbytes]
        pos += nbytes
        dtype = _DTYPES[name]
        if eff == "fp16":
            out.append(_from_le(chunk, torch.float16, shape).to(dtype))
        elif eff == "int8":
            out.append(dequantize_int8(_from_le(chunk, torch.int8, shape), float(scale), zp, dtype))
        else:
            out.append(_from_le(chunk, dtype, shape))
    if pos != len(buf):
        raise CodecError(f"{len(buf) - pos} trailing bytes after the last tensor")
    return out


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


__all__ = ["encode", "decode", "encoded_bytes", "payload_bytes", "quantize_int8", "dequantize_int8",
           "CodecError", "ENCODINGS", "MAGIC"]
