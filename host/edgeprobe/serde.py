"""Typed JSON for frozen dataclass records: ``to_dict`` and ``from_dict``, which checks every field's
type on the way in and refuses a part whose ``schema_version`` is newer than this reader knows (so
a record from a newer edgeprobe is refused with what to do, not misread)."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Optional, Union

from edgeprobe.errors import ResultError


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _allows_none(tp: Any) -> bool:
    return tp is Any or (typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp))


def _convert(tp: Any, value: Any, where: str) -> Any:
    if value is None:
        if _allows_none(tp) or typing.get_origin(tp) is not None or dataclasses.is_dataclass(tp):
            return None  # an optional value, or a whole part left out (the field's own type says)
        raise ResultError(f"{where}: expected {getattr(tp, '__name__', tp)}, got null")
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, where) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ResultError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_convert(args[0], v, f"{where}[]") for v in value)
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ResultError(f"{where}: expected an object, got {type(value).__name__}")
        return {str(k): _convert(vt, v, f"{where}.{_key(k)}") for k, v in value.items()}
    if tp in (int, float) and isinstance(value, int) and not isinstance(value, bool) \
            and not -2 ** 63 <= value < 2 ** 64:  # beyond what a runner writes (and float() would raise)
        raise ResultError(f"{where}: {tp.__name__} out of range, got {_short(value)}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is not bool and isinstance(value, bool))):
        raise ResultError(f"{where}: expected {tp.__name__}, got {_short(value)}")
    return value


def _short(value: Any, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters, so an error message stays one short line."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= width else text[:width - 3] + "..."


def _key(k: Any) -> str:
    """An object key as it appears in an error's path: as is when plain, else its short repr
    (a key can hold a newline)."""
    k = str(k)
    return k if k.isprintable() and len(k) <= 60 else _short(k)


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints`` once per class: evaluating the string annotations on every record
    was 80 % of reading one."""
    return typing.get_type_hints(cls)


@functools.lru_cache(maxsize=None)
def _known_version(cls: type) -> Optional[int]:
    """The newest ``schema_version`` this reader knows for ``cls``: the default of its
    ``schema_version`` field (Manifest, RunRecord, BenchResult, Request); None without one."""
    f = next((f for f in dataclasses.fields(cls) if f.name == "schema_version"), None)
    return f.default if f is not None and type(f.default) is int else None


def _check_version(cls: type, data: dict[str, Any], where: str) -> None:
    """Refuse a record (or a nested part) written by a newer edgeprobe, before reading its fields:
    a newer version may have changed them, and the reason should be the version, not a field."""
    known, version = _known_version(cls), data.get("schema_version")
    if known is not None and "schema_version" in data and type(version) is not int:  # null too: never a version
        raise ResultError(f"{where}.schema_version: expected int, got {_short(version)}")
    if known is not None and type(version) is int and version > known:
        raise ResultError(f"{where} has schema_version {_short(version)}; this edgeprobe reads up to {known}: "
                          "upgrade edgeprobe")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build a (nested) frozen dataclass from plain JSON data, checking types on the way, and the
    ``schema_version`` of every part that has one (``_check_version``; a class's own
    ``check_version()``, as Request has, is called on the result)."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ResultError(f"{where}: expected an object, got {type(data).__name__}")
    _check_version(cls, data, where)
    hints = _type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ResultError(f"{where}: missing field {f.name!r}")
    obj = cls(**kwargs)
    check = getattr(obj, "check_version", None)
    if callable(check):
        check()
    return obj


def parse_json(text: str, what: str) -> Any:
    """``json.loads`` with a one-line ResultError naming ``what`` (e.g. "the split plan")."""
    import json

    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits, too deep
        raise ResultError(f"{what} is not valid JSON: {str(exc)[:200]}") from None


def read_text_file(path: Any, what: str) -> str:
    """A saved record's text (UTF-8), with a one-line ResultError for a missing or unreadable file."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ResultError(f"no {what} file at {path}")
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultError(f"cannot read the {what} file {path}: {str(exc)[:200]}") from None
