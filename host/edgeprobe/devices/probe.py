"""Device state read before each run: CPU cores and their max frequency/capacity, battery,
thermal status. One shell round trip (``SNAPSHOT_SH``), parsed by pure functions.

The same script runs on Android (toybox sh, ``dumpsys``) and on Linux boards and this machine
(``sh``, no ``dumpsys``: the battery then comes from ``/sys/class/power_supply``). ``EDGEPROBE_SYSFS_ROOT``
moves the sysfs root, as for the runner's meters, so tests can present a fake big.LITTLE tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

SNAPSHOT_SH = r"""
S=${EDGEPROBE_SYSFS_ROOT:-/sys}
echo '##cpu'
for c in "$S"/devices/system/cpu/cpu[0-9]*; do
  [ -d "$c" ] || continue
  echo "${c##*/} $(cat "$c/cpufreq/cpuinfo_max_freq" 2>/dev/null || echo -) $(cat "$c/cpu_capacity" 2>/dev/null || echo -)"
done
echo '##battery'
if command -v dumpsys >/dev/null 2>&1; then dumpsys battery 2>/dev/null; else
  for b in "$S"/class/power_supply/*; do
    [ "$(cat "$b/type" 2>/dev/null)" = Battery ] || continue
    echo "level: $(cat "$b/capacity" 2>/dev/null)"; echo "temperature: $(cat "$b/temp" 2>/dev/null)"
    echo "sysfs status: $(cat "$b/status" 2>/dev/null)"; break
  done
fi
echo '##thermal'
command -v dumpsys >/dev/null 2>&1 && dumpsys thermalservice 2>/dev/null | head -n 40
echo '##end'
"""

_THERMAL_NAMES = ("none", "light", "moderate", "severe", "critical", "emergency", "shutdown")


@dataclass(frozen=True)
class CpuCore:
    index: int
    max_freq_khz: Optional[int]
    capacity: Optional[int]


@dataclass(frozen=True)
class BatteryState:
    level_percent: Optional[int]
    temperature_c: Optional[float]
    charging: Optional[bool]  # None: unknown
    source: str


@dataclass(frozen=True)
class Snapshot:
    cores: tuple[CpuCore, ...]
    battery: Optional[BatteryState]
    thermal_status: Optional[int]  # Android PowerManager THERMAL_STATUS_* (0 none .. 6 shutdown)

    def big_cores(self) -> tuple[int, ...]:
        """The fastest cluster: highest ``cpu_capacity`` (else max frequency); () when unknown."""
        for key in ("capacity", "max_freq_khz"):
            values = [getattr(c, key) for c in self.cores]
            if values and all(v is not None for v in values):
                top = max(values)  # type: ignore[type-var]
                return tuple(c.index for c in self.cores if getattr(c, key) == top)
        return ()


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("##"):
            current = line[2:].strip()
            out[current] = []
        elif current:
            out[current].append(line)
    return out


_INT = re.compile(r"[-+]?[0-9]{1,18}")  # ASCII digits only, and within int64 (str.isdigit takes "²")
_CPU = re.compile(r"cpu([0-9]{1,5})")  # Linux NR_CPUS is at most 8192
MAX_CORE = 8191


def _int(s: str) -> Optional[int]:
    """An integer as sysfs or dumpsys prints it; None for anything else (``-``, empty, garbage)."""
    s = s.strip()
    return int(s) if _INT.fullmatch(s) else None


def _in(value: Optional[int], lo: int, hi: int) -> Optional[int]:
    """``value`` when it is in lo..hi; None otherwise: an impossible reading is not a reading."""
    return value if value is not None and lo <= value <= hi else None


def parse_cpus(lines: list[str]) -> tuple[CpuCore, ...]:
    cores = []
    for line in lines:
        parts = line.split()
        m = _CPU.fullmatch(parts[0]) if len(parts) == 3 else None
        if m and int(m[1]) <= MAX_CORE:
            cores.append(CpuCore(int(m[1]), _in(_int(parts[1]), 0, 2 ** 63 - 1), _in(_int(parts[2]), 0, 2 ** 63 - 1)))
    return tuple(sorted(cores, key=lambda c: c.index))


def parse_battery(lines: list[str]) -> Optional[BatteryState]:
    """``dumpsys battery`` (level, temperature in tenths of °C, AC/USB/Wireless powered, status)
    or the sysfs fallback lines of SNAPSHOT_SH."""
    kv = {}
    for line in lines:
        key, sep, value = line.strip().partition(":")
        if sep:
            kv[key.strip().lower()] = value.strip()
    if not kv or not kv.get("level"):
        return None
    level = _in(_int(kv.get("level", "")), 0, 100)
    temp = _in(_int(kv.get("temperature", "")), -1000, 2000)  # tenths of °C: -100..200 °C
    if "sysfs status" in kv:
        status = kv["sysfs status"].lower()
        charging = None if not status else status in ("charging", "full")
        source = "sysfs power_supply"
    else:
        powered = [kv.get(k, "").lower() == "true" for k in ("ac powered", "usb powered", "wireless powered",
                                                            "dock powered")]
        # dumpsys status: 2 = charging, 5 = full (BatteryManager.BATTERY_STATUS_*)
        charging = any(powered) or kv.get("status") in ("2", "5")
        source = "dumpsys battery"
    return BatteryState(level, temp / 10.0 if temp is not None else None, charging, source)


def parse_thermal(lines: list[str]) -> Optional[int]:
    """``dumpsys thermalservice`` prints ``Thermal Status: N``."""
    for line in lines:
        m = re.match(r"\s*Thermal Status:\s*([0-9]+)", line)
        if m:
            return int(m.group(1)) if len(m.group(1)) <= 9 else None
    return None


def parse_snapshot(text: str) -> Snapshot:
    s = _sections(text)
    return Snapshot(parse_cpus(s.get("cpu", [])), parse_battery(s.get("battery", [])),
                    parse_thermal(s.get("thermal", [])))


def thermal_name(status: Optional[int]) -> str:
    if status is None:
        return "unknown"
    return _THERMAL_NAMES[status] if 0 <= status < len(_THERMAL_NAMES) else str(status)


def parse_cores(spec: str) -> tuple[int, ...]:
    """``--affinity`` values: ``all``, ``big``, or a core list like ``4-7`` / ``0,2,4``."""
    out: set[int] = set()
    shown = spec if len(spec) <= 40 else spec[:37] + "..."
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not _CORE.fullmatch(lo) or (sep and not _CORE.fullmatch(hi)):
            raise ValueError(f"bad core list {shown!r}; use all, big, or e.g. 4-7 or 0,2")
        if max(len(lo), len(hi)) > 5 or int(hi if sep else lo) > MAX_CORE:
            raise ValueError(f"core list {shown!r} names a core beyond the largest possible one ({MAX_CORE})")
        if sep and int(hi) < int(lo):
            raise ValueError(f"core range {lo}-{hi} in {shown!r} runs backwards; write it low-high, e.g. {hi}-{lo}")
        out.update(range(int(lo), int(hi if sep else lo) + 1))
    return tuple(sorted(out))


_CORE = re.compile(r"[0-9]+")  # ASCII digits (str.isdigit also takes "²", which int() refuses)


def cpu_mask(cores: tuple[int, ...]) -> str:
    """A hex mask taskset understands on both util-linux and Android's toybox."""
    return format(sum(1 << c for c in cores), "x")
