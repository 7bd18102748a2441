"""Meters read from procfs/sysfs: peak memory, energy (RAPL, battery), thermal zones; and raw
ODPM snapshots (``dumpsys android.hardware.power.stats.IPowerStats/default``) on Android.

Everything is read under ``EDGEPROBE_SYSFS_ROOT`` (default ``/sys``) so tests can drive a fake
tree. An absent meter is reported as ``{"available": false, "reason": ...}``, never as zero.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import threading
import time
from typing import Any, Callable, Optional

Mark = Optional[Callable[[str], None]]  # called at the window edges: "idle_start", "run_start", "run_end"


def sysfs_root() -> str:
    return os.environ.get("EDGEPROBE_SYSFS_ROOT", "/sys")


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def reset_hwm() -> Optional[str]:
    """Reset this process's VmHWM to its VmRSS (``/proc/self/clear_refs`` 5, Linux >= 4.0); None on
    success, else why not."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as exc:
        return f"writing 5 to /proc/self/clear_refs failed: {exc.strerror or exc}"
    return None


def peak_rss_definition(reset_failed: Optional[str]) -> str:
    """How ``memory.peak_rss_bytes - memory.baseline_hwm_bytes`` is to be read (the native runner's words)."""
    if reset_failed is None:
        return ("peak_rss_bytes - baseline_hwm_bytes: VmHWM after the run minus VmHWM before the model was loaded, "
                "the mark first reset to VmRSS (/proc/self/clear_refs 5), so it is the run's own peak above the "
                "runner's baseline")
    return ("peak_rss_bytes - baseline_hwm_bytes: VmHWM after the run minus VmHWM before the model was loaded (the "
            f"mark could not be reset: {reset_failed}), a lower bound of the run's peak above the runner's baseline "
            "when baseline_hwm_bytes > baseline_rss_bytes")


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


def _window(idle0: float, idle1: float, run0: float, run1: float) -> dict[str, float]:
    """CLOCK_MONOTONIC seconds (time.monotonic), the same clock as the native runner's. The idle
    window is [idle_start_s, idle_end_s); idle_end_s < run_start_s only when something (an ODPM
    snapshot) ran between the two windows and must count in neither."""
    return {"idle_start_s": idle0, "idle_end_s": idle1, "run_start_s": run0, "run_end_s": run1}


def _read_int(path: str) -> Optional[int]:
    """An integer file's value; None when it is missing, unreadable or not an integer (never 0)."""
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


class _Rapl:
    """Powercap energy counters (µJ) read at the edges of the idle and the run windows.

    A counter that cannot be read at an edge (vanished, unreadable, garbled), or one that went down
    without a readable ``max_energy_range_uj`` to undo the wrap, makes the block unavailable with the
    reason: it is never read as 0 and then "unwrapped" into a large energy.
    """

    def __init__(self, domains: list[str]) -> None:
        self.domains = domains
        self.start: dict[str, int] = {}
        self.t0 = self.idle0 = self.idle1 = 0.0
        self.idle_j: Optional[float] = None
        self.idle_dt: Optional[float] = None
        self.reason: Optional[str] = None  # the first counter that could not be read or unwrapped

    def _counters(self, edge: str) -> dict[str, int]:
        out = {}
        for d in self.domains:
            v = _read_int(os.path.join(d, "energy_uj"))
            if v is None and self.reason is None:
                self.reason = f"RAPL counter {d}/energy_uj could not be read at {edge}"
            out[d] = 0 if v is None else v
        return out

    def _delta_j(self, d: str, a: int, b: int) -> float:
        delta = b - a
        if delta < 0:  # the counter wrapped
            span = _read_int(os.path.join(d, "max_energy_range_uj"))
            if span is None or span <= 0:
                self.reason = self.reason or (f"RAPL counter {d}/energy_uj went down and max_energy_range_uj is "
                                              "unreadable, so the wrap cannot be undone")
                return 0.0
            delta += span
            if delta < 0:
                self.reason = self.reason or f"RAPL counter {d}/energy_uj went down by more than its range"
        return delta / 1e6

    def begin(self, idle_s: float = 0.0, mark: Mark = None) -> None:
        if mark and idle_s > 0:
            mark("idle_start")
        self.idle0 = time.monotonic()
        if idle_s > 0:
            c0 = self._counters("idle_start")
            time.sleep(idle_s)
            c1 = self._counters("idle_end")
            self.idle_j = sum(self._delta_j(d, c0[d], c1[d]) for d in self.domains)
            self.idle_dt = time.monotonic() - self.idle0
        self.idle1 = time.monotonic()
        if mark:
            mark("run_start")
        self.start, self.t0 = self._counters("run_start"), time.monotonic()

    def end(self, mark: Mark = None) -> dict[str, Any]:
        end, t1 = self._counters("run_end"), time.monotonic()
        if mark:
            mark("run_end")
        domains = {}
        for d in self.domains:
            name = _read(os.path.join(d, "name")) or os.path.basename(d)
            domains[f"{os.path.basename(d)}:{name}"] = self._delta_j(d, self.start[d], end[d])
        if self.reason is not None:
            return {"available": False, "reason": self.reason, "meter": "rapl"}
        return {"available": True, "reason": None, "meter": "rapl", "energy_j": sum(domains.values()),
                "duration_s": t1 - self.t0, "samples": 2, "method": "powercap energy counter delta",
                "domains": domains, "idle_energy_j": self.idle_j, "idle_duration_s": self.idle_dt,
                "window": _window(self.idle0, self.idle1, self.t0, t1)}


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
        self.t0 = self.idle0 = self.idle1 = 0.0

    def begin(self, idle_s: float = 0.0, mark: Mark = None) -> None:
        import subprocess
        import sys

        self._proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from edgeprobe_runner.meters import sample_battery; "
             f"sample_battery({self.supply!r}, {self.PERIOD_S!r}, {self.MAX_READ_S!r}, sys.stdout)"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        first = self._proc.stdout.readline()  # the sampler is running before the idle window opens
        self._lines = [first]
        if mark and idle_s > 0:
            mark("idle_start")
        self.idle0 = time.monotonic()
        if idle_s > 0:
            time.sleep(idle_s)
        self.idle1 = time.monotonic()
        if mark:
            mark("run_start")
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

    def end(self, mark: Mark = None) -> dict[str, Any]:
        t1 = time.monotonic()
        if mark:
            mark("run_end")
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
                "domains": {}, "window": _window(self.idle0, self.idle1, self.t0, t1),
                "supply": os.path.basename(self.supply), "supply_status": _read(os.path.join(self.supply, "status")),
                "charger_online": self._charger_online(), "raw_samples": raw}


class Unavailable:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def begin(self, idle_s: float = 0.0, mark: Mark = None) -> None:
        if mark:  # another meter (ODPM) measures: give it the same idle baseline
            if idle_s > 0:
                mark("idle_start")
                time.sleep(idle_s)
            mark("run_start")

    def end(self, mark: Mark = None) -> dict[str, Any]:
        if mark:
            mark("run_end")
        return {"available": False, "reason": self.reason}


def energy_meter():
    """The best energy meter this device offers: RAPL, else battery sampling, else Unavailable."""
    root = sysfs_root()
    domains = sorted(d for d in glob.glob(os.path.join(root, "class/powercap/intel-rapl:*"))
                     if d.count(":") == 1 and os.path.exists(os.path.join(d, "energy_uj")))
    if domains:
        if all(_read_int(os.path.join(d, "energy_uj")) is not None for d in domains):
            return _Rapl(domains)
        return Unavailable(f"RAPL energy_uj under {root}/class/powercap is not readable (permission denied?)")
    for supply in sorted(glob.glob(os.path.join(root, "class/power_supply/*"))):
        if _read(os.path.join(supply, "type")) == "Battery" and _read(os.path.join(supply, "current_now")) is not None \
                and _read(os.path.join(supply, "voltage_now")) is not None:
            return _Battery(supply)
    return Unavailable(f"no powercap/RAPL counters and no battery current_now/voltage_now under {root}")


ODPM_SERVICE = "android.hardware.power.stats.IPowerStats/default"
ODPM_MAX_BYTES = 64 * 1024  # per snapshot; the energy meter section is printed last, so the tail is kept
ODPM_TIMEOUT_S = 30.0  # dumpsys gives up on a service after 10 s itself


def keep_tail(raw: bytes, limit: int = ODPM_MAX_BYTES) -> bytes:
    """The last ``limit`` bytes, starting on a UTF-8 character boundary (the native runner's rule)."""
    if len(raw) <= limit:
        return raw
    tail = raw[-limit:]
    k = 0
    while k < len(tail) and k < 3 and 0x80 <= tail[k] <= 0xBF:  # continuation bytes of a cut character
        k += 1
    return tail[k:]


class Odpm:
    """Raw ``dumpsys android.hardware.power.stats.IPowerStats/default`` text at the window edges.

    Android's PowerStats HAL prints the On-Device Power Monitor rails' cumulative energy there
    (Pixel 6 and later). Nothing is parsed here: the text, its size and the CLOCK_MONOTONIC times
    just before and after the call go into the record, and the host parses and does the
    arithmetic. The first call doubles as the probe: no ``dumpsys`` binary, a non-zero exit, no
    output or "Can't find service" makes the block unavailable with the reason, and no further
    calls are made.
    """

    def __init__(self) -> None:
        self.dumpsys = shutil.which("dumpsys")
        self.reason: Optional[str] = None if self.dumpsys else "no dumpsys binary on PATH (not an Android device)"
        self.snapshots: list[dict[str, Any]] = []

    @property
    def active(self) -> bool:
        return self.reason is None

    def snapshot(self, window: str) -> None:
        if not self.active:
            return
        t0 = time.monotonic()
        try:
            proc = subprocess.run([self.dumpsys, ODPM_SERVICE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=ODPM_TIMEOUT_S)
            raw, rc = proc.stdout, proc.returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            raw, rc = b"", None
            self.reason = f"{window}: dumpsys {ODPM_SERVICE} failed: {exc}"
        t1 = time.monotonic()
        if self.reason:
            return
        text = keep_tail(raw).decode("utf-8", errors="replace")
        if rc != 0 or not raw.strip() or b"Can't find service" in raw[:4096]:
            first = (text.strip().splitlines() or [""])[0][:200]
            self.reason = (f"{window}: dumpsys {ODPM_SERVICE} exited {rc}" + (f": {first}" if first else " with no output"))
            return
        self.snapshots.append({"window": window, "t_start_s": t0, "t_end_s": t1, "size_bytes": len(raw),
                               "truncated": len(raw) > ODPM_MAX_BYTES, "text": text})

    def block(self) -> dict[str, Any]:
        reason = self.reason or (None if self.snapshots else "no snapshot was taken")
        return {"available": reason is None, "reason": reason, "service": ODPM_SERVICE, "snapshots": self.snapshots}


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
