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


def _window(idle0: float, run0: float, run1: float) -> dict[str, float]:
    """CLOCK_MONOTONIC seconds (time.monotonic), the same clock as the native runner's."""
    return {"idle_start_s": idle0, "run_start_s": run0, "run_end_s": run1}


class _Rapl:
    """Powercap energy counters (µJ) read at the edges of the idle and the run windows."""

    def __init__(self, domains: list[str]) -> None:
        self.domains = domains
        self.start: dict[str, int] = {}
        self.t0 = self.idle0 = 0.0
        self.idle_j: Optional[float] = None
        self.idle_dt: Optional[float] = None

    def _counters(self) -> dict[str, int]:
        return {d: int(_read(os.path.join(d, "energy_uj")) or 0) for d in self.domains}

    def _delta_j(self, d: str, a: int, b: int) -> float:
        delta = b - a
        if delta < 0:  # the counter wrapped
            delta += int(_read(os.path.join(d, "max_energy_range_uj")) or 0)
        return delta / 1e6

    def begin(self, idle_s: float = 0.0) -> None:
        self.idle0 = time.monotonic()
        if idle_s > 0:
            c0 = self._counters()
            time.sleep(idle_s)
            c1 = self._counters()
            self.idle_j = sum(self._delta_j(d, c0[d], c1[d]) for d in self.domains)
            self.idle_dt = time.monotonic() - self.idle0
        self.start, self.t0 = self._counters(), time.monotonic()

    def end(self) -> dict[str, Any]:
        end, t1 = self._counters(), time.monotonic()
        domains = {}
        for d in self.domains:
            name = _read(os.path.join(d, "name")) or os.path.basename(d)
            domains[f"{os.path.basename(d)}:{name}"] = self._delta_j(d, self.start[d], end[d])
        return {"available": True, "reason": None, "meter": "rapl", "energy_j": sum(domains.values()),
                "duration_s": t1 - self.t0, "samples": 2, "method": "powercap energy counter delta",
                "domains": domains, "idle_energy_j": self.idle_j, "idle_duration_s": self.idle_dt,
                "window": _window(self.idle0, self.t0, t1)}


def sample_battery(supply: str, period_s: float, max_read_s: float, out, stop: Optional[threading.Event] = None) -> int:
    """Write "t current_now voltage_now" lines to ``out`` every ``period_s`` until ``stop`` (or
    forever); returns how many samples were dropped because their reads were interrupted."""
    dropped = 0
    cur_path, volt_path = os.path.join(supply, "current_now"), os.path.join(supply, "voltage_now")
    while stop is None or not stop.is_set():
        t0 = time.monotonic()
        cur, volt = _read(cur_path), _read(volt_path)
        t1 = time.monotonic()
        if t1 - t0 > max_read_s:  # descheduled mid-read: the time stamp is unknown
            dropped += 1
            out.write("dropped\n")
        elif cur is not None and volt is not None:
            out.write(f"{(t0 + t1) / 2!r} {cur} {volt}\n")
        out.flush()
        time.sleep(period_s)
    return dropped


class _Battery:
    """Raw current_now / voltage_now every 10 ms; the host calibrates sign and unit.

    Sampled by a separate process: in this process the interpreter lock is held by inference
    for long stretches, and a sampling thread starved of it misses whole steps of the current.
    """

    PERIOD_S = 0.01
    MAX_READ_S = 0.005  # a sample whose reads took longer has no trustworthy time stamp: dropped, counted

    def __init__(self, supply: str) -> None:
        self.supply = supply
        self._proc: Any = None
        self.t0 = self.idle0 = 0.0

    def begin(self, idle_s: float = 0.0) -> None:
        import subprocess
        import sys

        self._proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from edgeprobe_runner.meters import sample_battery; "
             f"sample_battery({self.supply!r}, {self.PERIOD_S!r}, {self.MAX_READ_S!r}, sys.stdout)"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        first = self._proc.stdout.readline()  # the sampler is running before the idle window opens
        self._lines = [first]
        self.idle0 = time.monotonic()
        if idle_s > 0:
            time.sleep(idle_s)
        self.t0 = time.monotonic()

    def _charger_online(self) -> Optional[bool]:
        found = None
        for other in sorted(glob.glob(os.path.join(os.path.dirname(self.supply), "*"))):
            online = _read(os.path.join(other, "online")) if other != self.supply else None
            if online is not None:
                if online == "1":
                    return True
                found = False
        return found

    def end(self) -> dict[str, Any]:
        t1 = time.monotonic()
        time.sleep(2 * self.PERIOD_S)  # let the sampler pass the window's end
        self._proc.terminate()
        rest, _ = self._proc.communicate()
        raw, dropped = [], 0
        for line in self._lines + rest.splitlines():
            parts = line.split()
            if parts == ["dropped"]:
                dropped += 1
            elif len(parts) == 3:
                try:
                    t, cur, volt = float(parts[0]), int(parts[1]), int(parts[2])
                except ValueError:
                    continue
                if self.idle0 <= t <= t1:
                    raw.append([t, cur, volt])
        return {"available": True, "reason": None, "meter": "battery", "energy_j": None,
                "duration_s": t1 - self.t0, "samples": len(raw), "samples_dropped": dropped,
                "method": "current_now x voltage_now sampled every 10 ms; raw, calibrated on the host",
                "domains": {}, "window": _window(self.idle0, self.t0, t1),
                "supply": os.path.basename(self.supply), "supply_status": _read(os.path.join(self.supply, "status")),
                "charger_online": self._charger_online(), "raw_samples": raw}


class Unavailable:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def begin(self, idle_s: float = 0.0) -> None:
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
