"""The farm file (TOML): its devices, their labels and token variables, and the matrix to measure.

Every mistake is one ``UsageError`` line naming the file and line (``farm.toml:7: unknown key
'iteratons' in [matrix]; known: ...``). tomllib reports no line numbers for values, so the lines
are found by scanning the raw text (:func:`_key_lines`). Tokens never go in the file: a device
names the environment variable that holds its token (``token_env``). Importing this module does
not import torch (recipes are checked against ``compress.CATALOG``, not ``compress.parse``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from edgeprobe.errors import UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass(frozen=True)
class DeviceEntry:
    """One ``[[device]]`` table; ``line`` is its header's line, ``path`` the file it came from."""

    id: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    token_env: Optional[str] = None
    line: int = 0
    path: str = "<text>"
    host: Optional[str] = None  # the agent that offers it, in a farm on Ray (``farm/executors/ray.py``)


@dataclass(frozen=True)
class MatrixSpec:
    """The ``[matrix]`` table, defaults filled in; ``line``/``devices_line``: where it and its
    ``devices =`` are (the header's line when ``devices`` is not given)."""

    models: tuple[str, ...]
    recipes: tuple[str, ...] = ("fp32",)
    backends: tuple[str, ...] = ("xnnpack",)
    formats: tuple[str, ...] = ("pte",)
    devices: tuple[str, ...] = ("*",)
    launches: int = 1
    iterations: int = 20
    warmup: int = 3
    min_seconds: float = 0.0
    max_iterations: int = 0  # 0: no cap on the timed loop
    threads: int = 0
    timeout_s: float = 300.0
    cooldown_s: float = 0.0
    min_battery_percent: Optional[float] = None
    max_thermal_status: Optional[int] = None
    line: int = 1
    devices_line: int = 1


@dataclass(frozen=True)
class FarmFile:
    """A checked farm file. ``discover`` is only recorded: the caller discovers runners and adds
    them (``dataclasses.replace(farm, devices=farm.devices + found)``) before :func:`select`."""

    path: str
    devices: tuple[DeviceEntry, ...]
    matrix: MatrixSpec
    discover: bool = False


_TOP_KEYS = ("discover", "device", "matrix")
_DEVICE_KEYS = ("id", "labels", "token_env")
_LIST_KEYS = ("models", "recipes", "backends", "formats", "devices")
_MATRIX_KEYS = _LIST_KEYS + ("launches", "iterations", "warmup", "min_seconds", "max_iterations", "threads",
                             "timeout_s", "cooldown_s", "min_battery_percent", "max_thermal_status")
# (key, type, lowest, highest, lowest allowed itself): the numeric settings and their ranges
_NUMBERS: tuple[tuple[str, type, float, Optional[float], bool], ...] = (
    ("launches", int, 1, None, True), ("iterations", int, 1, None, True), ("warmup", int, 0, None, True),
    ("min_seconds", float, 0, None, True), ("max_iterations", int, 0, None, True), ("threads", int, 0, None, True), ("timeout_s", float, 0, None, False),
    ("cooldown_s", float, 0, None, True), ("min_battery_percent", float, 0, 100, True),
    ("max_thermal_status", int, 0, 6, True),
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KEY = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_ASSIGN = re.compile(rf"\s*({_KEY})(?:\s*\.\s*{_KEY})*\s*=")
_HEADER = re.compile(rf"\s*(\[\[?)\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*\]\]?")
_TOML_LINE = re.compile(r"at line (\d+)")

Table = tuple[Union[str, int], ...]  # () top level, ("device", k), ("matrix",)


class _Lines:
    """Where each table starts and each key is assigned, found in the raw text."""

    def __init__(self, text: str) -> None:
        self.headers: dict[Table, int] = {}
        self.keys: dict[tuple[Table, str], int] = {}
        table: Table = ()
        ndevice = -1
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0] if raw.lstrip().startswith("[") else raw
            h = _HEADER.match(line)
            if h and line.strip().endswith("]"):
                parts = [p.strip().strip("\"'") for p in re.split(r"\s*\.\s*", h.group(2))]
                if h.group(1) == "[[" and parts == ["device"]:
                    ndevice += 1
                    table = ("device", ndevice)
                elif parts[0] == "device" and len(parts) > 1 and ndevice >= 0:  # [device.labels]
                    table = ("device", ndevice)
                    self.keys.setdefault((table, parts[1]), n)
                    continue
                else:
                    table = (parts[0],)
                self.headers.setdefault(table, n)
                continue
            a = _ASSIGN.match(raw)
            if a:
                self.keys.setdefault((table, a.group(1).strip("\"'")), n)

    def of(self, table: Table, key: Optional[str] = None) -> int:
        """The line of ``key`` in ``table``, else the table's header, else 1."""
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        if key is not None and not table and ((key,) in self.headers or (key, 0) in self.headers):
            return self.headers.get((key,), self.headers.get((key, 0), 1))  # a top-level key that is a table
        return self.headers.get(table, 1)


class _Checker:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.lines = path, _Lines(text)

    def fail(self, line: int, message: str) -> UsageError:
        return UsageError(f"{self.path}:{line}: {message}")

    def unknown_keys(self, data: Mapping[str, Any], known: Sequence[str], table: Table, where: str) -> None:
        for key in data:
            if key == "token" and "token_env" in known:
                raise self.fail(self.lines.of(table, key), "tokens never go in the farm file: put the token in an "
                                "environment variable and name it with token_env = \"VAR\"")
            if key not in known:
                raise self.fail(self.lines.of(table, key), f"unknown key {key!r} in {where}; known: {', '.join(known)}")

    def string(self, value: Any, table: Table, key: str, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(self.lines.of(table, key), f"{key} in {where} must be a non-empty string, got {value!r}")
        return value

    def string_list(self, value: Any, table: Table, key: str) -> tuple[str, ...]:
        line = self.lines.of(table, key)
        if not isinstance(value, list) or not value:
            raise self.fail(line, f"{key} in [matrix] must be a non-empty list of strings, got {value!r}")
        for v in value:
            if not isinstance(v, str) or not v.strip():
                raise self.fail(line, f"{key} in [matrix] must hold non-empty strings, got {v!r}")
        dup = next((v for i, v in enumerate(value) if v in value[:i]), None)
        if dup is not None:
            raise self.fail(line, f"{key} in [matrix] lists {dup!r} twice")
        return tuple(value)

    def number(self, value: Any, key: str, kind: type, low: float, high: Optional[float], low_ok: bool) -> Any:
        line = self.lines.of(("matrix",), key)
        ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            what = "an integer" if kind is int else "a number"
            raise self.fail(line, f"{key} in [matrix] must be {what}, got {value!r}")
        if value < low or (value == low and not low_ok) or (high is not None and value > high):
            rng = (f"{low}..{high}" if high is not None else f">= {low}" if low_ok else f"> {low}")
            raise self.fail(line, f"{key} in [matrix] must be {rng}, got {value!r}")
        return kind(value)


def check_device_id(device_id: str) -> Optional[str]:
    """What is wrong with ``device_id`` (the syntax ``registry.open_device`` accepts), or None."""
    if device_id == "local" or (":" not in device_id and device_id.strip() == device_id and device_id):
        return None
    if device_id.startswith("tcp:"):
        host, _, port = device_id[4:].rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return None
        return f"device id {device_id!r} must look like tcp:HOST:PORT (a numeric port)"
    if device_id.startswith("adb:"):
        return None if device_id[4:] else f"device id {device_id!r} must look like adb:SERIAL or adb:HOST:PORT"
    return (f"device id {device_id!r} is not local, adb:SERIAL, adb:HOST:PORT, tcp:HOST:PORT or a runner name "
            "(a name has no ':')")


def check_recipe(text: str) -> Optional[str]:
    """What is wrong with recipe ``text`` (checked against ``compress.CATALOG``, no torch), or None."""
    return _recipe(text)[1]


def canonical_recipe(text: str) -> str:
    """``text`` with every parameter spelled out, as ``compress.canonical`` would write it (no torch)."""
    canon, error = _recipe(text)
    if error:
        raise UsageError(error)
    return canon


def _recipe(text: str) -> tuple[str, Optional[str]]:
    from edgeprobe.compress import CATALOG

    text = text.strip()
    if text in ("", "fp32", "none"):
        return "fp32", None
    steps, kinds = [], []
    for raw in text.split("+"):
        name, _, arg = raw.strip().partition(":")
        r = CATALOG.get(name)
        if r is None:
            return "", f"unknown recipe {name!r} in {text!r}; valid recipes: fp32, {', '.join(CATALOG)}"
        params: dict[str, Any] = {p.name: p.default for p in r.params}
        by_name = {p.name: p for p in r.params}
        for item in (a for a in arg.split(",") if a):
            key, eq, value = item.partition("=")
            if not eq:
                if r.positional is None:
                    return "", f"recipe {raw!r}: give parameters as key=value ({r.usage()})"
                key, value = r.positional, item
            if key not in by_name:
                return "", f"recipe {raw!r}: unknown parameter {key!r}; {r.usage()}"
            p = by_name[key]
            try:
                params[key] = value.lower() in ("1", "true", "yes", "on") if p.kind is bool else p.kind(value)
            except ValueError:
                return "", f"recipe {raw!r}: {p.name} must be a {p.kind.__name__}, got {value!r}"
        steps.append(name + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else ""))
        kinds.append(r.kind)
    quant = [i for i, k in enumerate(kinds) if k == "quant"]
    if len(quant) > 1 or (quant and quant[0] != len(kinds) - 1):
        return "", f"recipe {text!r}: at most one quantization step, and it must come last (e.g. channel:0.3+int8)"
    return "+".join(steps), None


def _read(path: Union[str, Path]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read farm file {str(path)!r}: {e.strerror or e}") from None


def load_farm(path: Union[str, Path], *, devices_listed: bool = True) -> FarmFile:
    """Read and check the farm file at ``path`` (``devices_listed=False``: its devices come from
    elsewhere, a Ray cluster's agents, so its selectors are checked against those later)."""
    return parse_farm(_read(path), str(path), devices_listed=devices_listed)


def _parse(c: "_Checker", text: str, path: str) -> dict:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_LINE.search(str(e))
        raise UsageError(f"{path}:{m.group(1) if m else 1}: invalid TOML: {e}") from None
    c.unknown_keys(data, _TOP_KEYS, (), "the farm file")
    return data


def parse_farm(text: str, path: str = "<text>", *, devices_listed: bool = True) -> FarmFile:
    """Check the farm file ``text`` (``path`` names it in errors)."""
    c = _Checker(path, text)
    data = _parse(c, text, path)
    discover = data.get("discover", False)
    if not isinstance(discover, bool):
        raise c.fail(c.lines.of((), "discover"), f"discover must be true or false, got {discover!r}")
    farm = FarmFile(path, _devices(c, data.get("device", [])), _matrix(c, data.get("matrix")), discover)
    if not discover and devices_listed:  # with discovery on, the runners found later may match what the listed ones don't
        select(farm)
    return farm


def load_devices(path: Union[str, Path]) -> tuple[DeviceEntry, ...]:
    """The ``[[device]]`` tables of a farm file, checked as :func:`parse_farm` checks them; a
    ``[matrix]`` may be there (the same file can serve a one-host farm) and is not read. For
    ``edgeprobe farm agent --devices``: the devices of one host."""
    text, where = _read(path), str(path)
    c = _Checker(where, text)
    devices = _devices(c, _parse(c, text, where).get("device", []))
    if not devices:
        raise UsageError(f"{where}: no [[device]] tables: an agent offers the devices its file lists")
    return devices


def _devices(c: _Checker, raw: Any) -> tuple[DeviceEntry, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, dict) for d in raw):
        raise c.fail(c.lines.of((), "device"), "device must be [[device]] tables")
    out: list[DeviceEntry] = []
    seen: dict[str, int] = {}
    for k, d in enumerate(raw):
        table: Table = ("device", k)
        header = c.lines.of(table)
        where = f"[[device]] (line {header})"
        c.unknown_keys(d, _DEVICE_KEYS, table, where)
        if "id" not in d:
            raise c.fail(header, "[[device]] has no id (local, adb:SERIAL, tcp:HOST:PORT or a runner name)")
        device_id = c.string(d["id"], table, "id", where)
        problem = check_device_id(device_id)
        if problem:
            raise c.fail(c.lines.of(table, "id"), problem)
        if device_id in seen:
            raise c.fail(c.lines.of(table, "id"), f"device {device_id!r} is listed twice (first on line {seen[device_id]})")
        seen[device_id] = c.lines.of(table, "id")
        labels = d.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise c.fail(c.lines.of(table, "labels"),
                         f"labels of device {device_id!r} must be a table of strings, e.g. {{ tier = \"phone\" }}")
        token_env = d.get("token_env")
        if token_env is not None and (not isinstance(token_env, str) or not _ENV_NAME.match(token_env)):
            raise c.fail(c.lines.of(table, "token_env"),
                         f"token_env of device {device_id!r} must name an environment variable, got {token_env!r}")
        out.append(DeviceEntry(device_id, dict(labels), token_env, header, c.path))
    return tuple(out)


def _matrix(c: _Checker, raw: Any) -> MatrixSpec:
    table: Table = ("matrix",)
    if raw is None:
        raise c.fail(1, "no [matrix] table; add one with at least models = [\"...\"]")
    if not isinstance(raw, dict):
        raise c.fail(c.lines.of((), "matrix"), "matrix must be a [matrix] table")
    c.unknown_keys(raw, _MATRIX_KEYS, table, "[matrix]")
    if "models" not in raw:
        raise c.fail(c.lines.of(table), "[matrix] has no models = [...]")
    values: dict[str, Any] = {k: c.string_list(raw[k], table, k) for k in _LIST_KEYS if k in raw}
    canon: dict[str, str] = {}
    for r in values.get("recipes", ()):
        same, problem = _recipe(r)
        if problem:
            raise c.fail(c.lines.of(table, "recipes"), problem)
        if same in canon:
            raise c.fail(c.lines.of(table, "recipes"), f"recipes {canon[same]!r} and {r!r} are the same recipe")
        canon[same] = r
    for key, kind, low, high, low_ok in _NUMBERS:
        if key in raw:
            values[key] = c.number(raw[key], key, kind, low, high, low_ok)
    cap, iterations = values.get("max_iterations", 0), values.get("iterations", MatrixSpec.iterations)
    if cap and cap < iterations:
        raise c.fail(c.lines.of(table, "max_iterations"), f"max_iterations {cap} is below iterations {iterations}; "
                     "give 0 (no cap) or at least iterations")
    return MatrixSpec(**values, line=c.lines.of(table), devices_line=c.lines.of(table, "devices"))


def select(farm: FarmFile, selectors: Optional[Sequence[str]] = None) -> list[DeviceEntry]:
    """The devices ``selectors`` pick (default: the matrix's): ``*`` (all), an exact id or
    ``key=value`` (every device with that label); the union, in file order, each once. A selector
    that picks nothing is a UsageError naming it and the line of ``devices =``."""
    selectors = farm.matrix.devices if selectors is None else selectors
    chosen: set[str] = set()
    for s in selectors:
        key, eq, value = s.partition("=")
        if s == "*":
            hit = {d.id for d in farm.devices}
        elif eq:
            hit = {d.id for d in farm.devices if d.labels.get(key.strip()) == value.strip()}
        else:
            hit = {d.id for d in farm.devices if d.id == s}
        if not hit:
            listed = ", ".join(d.id for d in farm.devices) or "none"
            raise UsageError(f"{farm.path}:{farm.matrix.devices_line}: device selector {s!r} matches no device "
                             f"(listed: {listed})")
        chosen |= hit
    return [d for d in farm.devices if d.id in chosen]


def token_for(entry: DeviceEntry) -> Optional[str]:
    """The token of ``entry`` from its ``token_env`` variable (None when it names none)."""
    if entry.token_env is None:
        return None
    token = os.environ.get(entry.token_env)
    if not token:
        raise UsageError(f"{entry.path}:{entry.line}: device {entry.id}: token variable {entry.token_env} is not set")
    return token


def check_tokens(farm: FarmFile, devices: Optional[Sequence[DeviceEntry]] = None) -> None:
    """Fail now, before any lowering, if a device's (default: every listed device's) token is unset."""
    for d in farm.devices if devices is None else devices:
        token_for(d)
