"""Run hygiene: check battery and thermal state before a run, optionally cool down, pin the
runner to cores, and switch Android's fixed-performance mode on for the run. Everything applied
(or found unavailable) is recorded in the result's ``DeviceState``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

from edgeprobe.devices.base import SHELL
from edgeprobe.devices.probe import SNAPSHOT_SH, Snapshot, cpu_mask, parse_cores, parse_snapshot, thermal_name
from edgeprobe.errors import DeviceNotReadyError, UsageError
from edgeprobe.results import CpuLoad, DeviceState, ProcessCpu

POLL_S = 5.0
TOP_OTHERS = 5  # the busiest other processes kept in the record

# One round trip on Linux and Android (toybox): load average, the per-CPU jiffies, every visible
# process's /proc/<pid>/stat (one `cat`, no loop: hundreds of processes on a phone).
CPU_SH = "cat /proc/loadavg 2>/dev/null; echo @@; grep '^cpu' /proc/stat 2>/dev/null; echo @@; " \
         "cat /proc/[0-9]*/stat 2>/dev/null; echo @@"


@dataclass(frozen=True)
class CpuSample:
    t_s: float  # host monotonic time of the reading
    loadavg_1m: Optional[float]
    total_jiffies: int  # all CPUs: user..steal
    busy_jiffies: int  # total minus idle and iowait
    cpus: int  # cpuN lines (online CPUs)
    procs: dict[int, tuple[str, int]]  # pid -> (comm, utime + stime in jiffies)


def parse_cpu_sample(text: str, t_s: float = 0.0) -> Optional[CpuSample]:
    """``CPU_SH`` output -> CpuSample; None when /proc/stat was not readable."""
    parts = text.split("@@")
    if len(parts) < 3:
        return None
    loadavg: Optional[float] = None
    try:
        loadavg = float(parts[0].split()[0])
    except (IndexError, ValueError):
        pass
    total = busy = cpus = 0
    seen_total = False
    for line in parts[1].splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] == "cpu":
            try:
                vals = [int(x) for x in f[1:9]]
            except ValueError:
                return None
            if len(vals) < 4:
                return None
            total = sum(vals)
            busy = total - vals[3] - (vals[4] if len(vals) > 4 else 0)
            seen_total = True
        elif f[0][3:].isdigit():
            cpus += 1
    if not seen_total:
        return None
    procs: dict[int, tuple[str, int]] = {}
    for line in parts[2].splitlines():
        i, j = line.find("("), line.rfind(")")
        if i <= 0 or j < i:
            continue
        rest = line[j + 2:].split()
        try:
            procs[int(line[:i])] = (line[i + 1:j], int(rest[11]) + int(rest[12]))
        except (IndexError, ValueError):
            continue
    return CpuSample(t_s, loadavg, total, busy, cpus, procs)


def cpu_load(before: Optional[CpuSample], after: Optional[CpuSample], *, own_pid: Optional[int] = None,
             top: int = TOP_OTHERS) -> CpuLoad:
    """What the CPUs did between two samples, in cores (1.0 = one core busy all the window)."""
    if before is None or after is None:
        return CpuLoad(False, "/proc/stat could not be read on the device")
    dt = after.total_jiffies - before.total_jiffies
    cpus = after.cpus or 1
    if dt <= 0:
        return CpuLoad(False, "/proc/stat did not advance between the readings")
    per_core = dt / cpus  # jiffies of one core over the window
    others = []
    for pid, (name, ticks) in after.procs.items():
        if pid in before.procs and before.procs[pid][0] == name:
            d = ticks - before.procs[pid][1]
            if d > 0:
                others.append(ProcessCpu("edgeprobe host (this process)" if pid == own_pid else name, pid, d / per_core))
    others.sort(key=lambda p: -p.cores)
    return CpuLoad(True, None, window_s=after.t_s - before.t_s, cores=after.cpus or None,
                   loadavg_1m_before=before.loadavg_1m, busy_cores=(after.busy_jiffies - before.busy_jiffies) / per_core,
                   others_cores=sum(p.cores for p in others), others=tuple(others[:top]),
                   processes_seen=len(after.procs))


def cpu_sample(transport) -> Optional[CpuSample]:
    try:
        return parse_cpu_sample(transport.shell(CPU_SH), time.monotonic())
    except Exception:  # noqa: BLE001 - the CPU reading must never cost the measurement
        return None


def snapshot(transport) -> Optional[Snapshot]:
    if SHELL not in transport.capabilities:
        return None
    return parse_snapshot(transport.shell(SNAPSHOT_SH))


def _state(snap: Optional[Snapshot], source: str) -> DeviceState:
    if snap is None:
        return DeviceState(source=source)
    b = snap.battery
    return DeviceState(
        source=source,
        cpu_max_freq_khz=tuple(c.max_freq_khz for c in snap.cores),
        cpu_capacity=tuple(c.capacity for c in snap.cores),
        big_cores=snap.big_cores(),
        battery_level_percent=b.level_percent if b else None,
        battery_temperature_c=b.temperature_c if b else None,
        charging=b.charging if b else None,
        thermal_status=snap.thermal_status,
    )


class Session:
    """``with Session(transport, config) as s:`` checks and prepares the device; ``s.prefix`` is
    the argv prefix for the runner (core pinning); ``s.finish()`` gives the final DeviceState."""

    def __init__(self, transport, config, *, sleep: Callable[[float], None] = time.sleep,
                 log: Optional[Callable[[str], None]] = None, performance: Optional["PerformanceMode"] = None) -> None:
        self.t, self.c, self.sleep, self.log = transport, config, sleep, log or (lambda _m: None)
        self.prefix: list[str] = []
        self.state = DeviceState(source="none")
        # a measurement session passes its own PerformanceMode (on once, off when the session closes);
        # alone, this run switches it on and off again
        self._own_perf = performance is None
        self._perf = performance or PerformanceMode(transport)
        self._cpu_before: Optional[CpuSample] = None

    def __enter__(self) -> "Session":
        c = self.c
        has_shell = SHELL in self.t.capabilities
        source = {"adb": "getprop/dumpsys/sysfs over adb", "local": "sysfs (sh)"}.get(self.t.kind, self.t.kind)
        if not has_shell:
            if c.affinity != "all" or c.fixed_performance:
                raise UsageError(f"a {self.t.kind} device cannot pin cores or set performance modes; "
                                 "drop --affinity/--fixed-performance")
            self.state = DeviceState(source=f"unavailable: the {self.t.kind} transport offers no shell to read it")
            return self
        snap = snapshot(self.t)
        notes: list[str] = []
        waited = 0.0
        if c.cooldown_s > 0:
            self.log(f"cooling down for {c.cooldown_s:g} s")
            self.sleep(c.cooldown_s)
            waited += c.cooldown_s
            snap = snapshot(self.t)
        if c.max_thermal_status is not None:
            if snap is None or snap.thermal_status is None:
                notes.append("thermal status unknown (no dumpsys thermalservice); --max-thermal-status not checked")
            else:
                deadline = waited + max(c.thermal_wait_s, 0.0)
                while snap.thermal_status > c.max_thermal_status and waited < deadline:
                    self.log(f"thermal status {thermal_name(snap.thermal_status)}; waiting for it to fall")
                    self.sleep(POLL_S)
                    waited += POLL_S
                    snap = snapshot(self.t)
                    assert snap is not None
                if snap.thermal_status is not None and snap.thermal_status > c.max_thermal_status:
                    raise DeviceNotReadyError(
                        f"thermal status is {snap.thermal_status} ({thermal_name(snap.thermal_status)}), above "
                        f"--max-thermal-status {c.max_thermal_status} after waiting {waited:g} s; let the device cool")
        if c.min_battery_percent is not None:
            level = snap.battery.level_percent if snap and snap.battery else None
            if level is None:
                notes.append("no battery level readable; --min-battery not checked")
            elif level < c.min_battery_percent:
                raise DeviceNotReadyError(f"battery at {level} %, below --min-battery {c.min_battery_percent:g} %; "
                                          "charge it (then unplug for energy numbers)")
        state = _state(snap, source)
        if c.affinity != "all":
            if c.affinity == "big":
                cores = state.big_cores
                if not cores:
                    raise DeviceNotReadyError("cannot tell the big cores: no cpu_capacity or cpuinfo_max_freq in sysfs; "
                                              "give the cores, e.g. --affinity 4-7")
            else:
                try:
                    cores = parse_cores(c.affinity)
                except ValueError as exc:
                    raise UsageError(str(exc)) from None
            self.prefix = ["taskset", cpu_mask(cores)]
            state = dataclasses.replace(state, affinity_cores=cores)
        if c.fixed_performance:
            state = dataclasses.replace(state, fixed_performance=self._perf.ensure_on())
        self.state = dataclasses.replace(state, cooldown_waited_s=waited, notes=tuple(notes))
        self._cpu_before = cpu_sample(self.t)  # last, right before the run
        return self

    def finish(self) -> DeviceState:
        """The final DeviceState: thermal status after the run, and what else used the CPU during it."""
        if self.state.source.startswith("unavailable") or SHELL not in self.t.capabilities:
            return dataclasses.replace(self.state, cpu_load=CpuLoad(
                False, f"the {self.t.kind} transport offers no shell to read /proc/stat"))
        load = cpu_load(self._cpu_before, cpu_sample(self.t), own_pid=os.getpid() if self.t.kind == "local" else None)
        state = dataclasses.replace(self.state, cpu_load=load)
        try:
            after = snapshot(self.t)
        except Exception:  # noqa: BLE001 - the record matters more than the after-reading
            return state
        return dataclasses.replace(state, thermal_status_after=after.thermal_status if after else None)

    def __exit__(self, *exc: object) -> None:
        if self._own_perf:
            self._perf.off()


class PerformanceMode:
    """Android's fixed-performance mode (``cmd power set-fixed-performance-mode-enabled``): switched
    on at most once and off again by ``off()``; ``ensure_on()`` says "on" or why it is unavailable."""

    def __init__(self, transport) -> None:
        self.t = transport
        self.state: Optional[str] = None  # None: not asked for yet

    def ensure_on(self) -> str:
        if self.state is None:
            out = self.t.shell("cmd power set-fixed-performance-mode-enabled true 2>&1; echo rc=$?")
            if out.strip().endswith("rc=0") and "rror" not in out and "nknown" not in out:
                self.state = "on"
            else:
                reason = out.strip().rsplit("rc=", 1)[0].strip().splitlines()
                self.state = "unavailable: " + (reason[-1] if reason else "cmd power failed")
        return self.state

    def off(self) -> None:
        if self.state == "on":
            try:
                self.t.shell("cmd power set-fixed-performance-mode-enabled false")
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self.state = None
