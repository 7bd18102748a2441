"""Meters read from procfs/sysfs: peak memory, energy (RAPL, battery), thermal zones.

Everything is read under ``EDGEPROBE_SYSFS_ROOT`` (default ``/sys``) so tests can drive a fake
tree. An absent meter is reported as ``{"available": false, "reason": ...}``, never as zero.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from typing import Any, Optional


def sysfs_root() -> str:
    return os.environ.get("EDGEPROBE_SYSFS_ROOT", "/sys")


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def proc_status() -> dict[str, int]:
    """VmRSS / VmHWM / VmSwap of this process in bytes."""
    out: dict[str, int] = {}
    text = _read("/proc/self/status") or ""
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "VmSwap"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def thermal_zones() -> dict[str, float]:
    zones = {}
    for zone in sorted(glob.glob(os.path.join(sysfs_root(), "class/thermal/thermal_zone*"))):
        temp = _read(os.path.join(zone, "temp"))
        if temp is None:
            continue
        try:
            value = int(temp) / 1000.0
        except ValueError:
            continue
        kind = _read(os.path.join(zone, "type")) or "unknown"
        zones[f"{os.path.basename(zone)}:{kind}"] = value
    return zones


def thermal_block(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    if not before and not after:
        return {"available": False, "reason": f"no readable thermal zones under {sysfs_root()}/class/thermal"}
    return {"available": True, "reason": None, "before_c": before, "after_c": after}


class _Rapl:
    def __init__(self, domains: list[str]) -> None:
        self.domains = domains
        self.start: dict[str, int] = {}
        self.t0 = 0.0

    def _counters(self) -> dict[str, int]:
        return {d: int(_read(os.path.join(d, "energy_uj")) or 0) for d in self.domains}

    def begin(self) -> None:
        self.start, self.t0 = self._counters(), time.monotonic()

    def end(self) -> dict[str, Any]:
        end, dt = self._counters(), time.monotonic() - self.t0
        domains = {}
        for d in self.domains:
            delta = end[d] - self.start[d]
            if delta < 0:  # the counter wrapped
                delta += int(_read(os.path.join(d, "max_energy_range_uj")) or 0)
            name = _read(os.path.join(d, "name")) or os.path.basename(d)
            domains[f"{os.path.basename(d)}:{name}"] = delta / 1e6
        return {"available": True, "reason": None, "meter": "rapl", "energy_j": sum(domains.values()),
                "duration_s": dt, "samples": 2, "method": "powercap energy counter delta", "domains": domains}


class _Battery:
    PERIOD_S = 0.01

    def __init__(self, supply: str) -> None:
        self.supply = supply
        self.energy_j = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.t0 = 0.0

    def _power_w(self) -> Optional[float]:
        cur, volt = _read(os.path.join(self.supply, "current_now")), _read(os.path.join(self.supply, "voltage_now"))
        if cur is None or volt is None:
            return None
        return abs(int(cur)) * 1e-6 * int(volt) * 1e-6

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.PERIOD_S):
            now = time.monotonic()
            p = self._power_w()
            if p is not None:
                self.energy_j += p * (now - last)
                self.samples += 1
            last = now

    def begin(self) -> None:
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def end(self) -> dict[str, Any]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        return {"available": True, "reason": None, "meter": "battery", "energy_j": self.energy_j,
                "duration_s": time.monotonic() - self.t0, "samples": self.samples,
                "method": "current_now*voltage_now sampling (uncalibrated sign/unit)",
                "domains": {os.path.basename(self.supply): self.energy_j}}


class Unavailable:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def begin(self) -> None:
        pass

    def end(self) -> dict[str, Any]:
        return {"available": False, "reason": self.reason}


def energy_meter():
    """The best energy meter this device offers: RAPL, else battery sampling, else Unavailable."""
    root = sysfs_root()
    domains = sorted(d for d in glob.glob(os.path.join(root, "class/powercap/intel-rapl:*"))
                     if d.count(":") == 1 and os.path.exists(os.path.join(d, "energy_uj")))
    if domains:
        if all(_read(os.path.join(d, "energy_uj")) is not None for d in domains):
            return _Rapl(domains)
        return Unavailable(f"RAPL energy_uj under {root}/class/powercap is not readable (permission denied?)")
    for supply in sorted(glob.glob(os.path.join(root, "class/power_supply/*"))):
        if _read(os.path.join(supply, "type")) == "Battery" and _read(os.path.join(supply, "current_now")) is not None \
                and _read(os.path.join(supply, "voltage_now")) is not None:
            return _Battery(supply)
    return Unavailable(f"no powercap/RAPL counters and no battery current_now/voltage_now under {root}")


def environment() -> dict[str, Any]:
    import platform
    import socket

    cpu_model = None
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "CPU part"):
        for line in text.splitlines():
            if line.startswith(key):
                cpu_model = line.split(":", 1)[1].strip()
                break
        if cpu_model:
            break
    u = platform.uname()
    return {"os": u.system, "kernel": u.release, "machine": u.machine, "cpu_model": cpu_model,
            "cores": os.cpu_count(), "hostname": socket.gethostname()}
