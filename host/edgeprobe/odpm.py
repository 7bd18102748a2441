"""ODPM (On-Device Power Monitor) rails from ``dumpsys android.hardware.power.stats.IPowerStats/default``.

The runners capture that command's raw text at the window edges (PROTOCOL.md, ``energy.odpm``);
this module parses it and does the arithmetic. Importing it needs nothing outside the standard
library.

Format (source: Android's Pixel PowerStats HAL, ``hardware/google/pixel/powerstats/PowerStatsAidl.cpp``,
``PowerStats::dump`` → ``dumpEnergyMeter``, read here in LineageOS/android_hardware_google_pixel at
android-14.0.0_r50; the HIDL 1.0 variant is ``powerstats/PowerStats.cpp`` ``DumpEnergyDataToFd``).
``dump`` prints three sections in this order: state residencies, energy consumers, energy meter::

    ============= PowerStats HAL 2.0 energy meter ==============
                               Channel    Cumulative Energy
         [S2M_VDD_CPUCL2]:CPU(BIG)           124265.86 mWs
         [VSYS_PWR_MODEM]:Modem              179646.98 mWs
    ========== End of PowerStats HAL 2.0 energy meter ==========

- one line per channel (rail): ``StringPrintf("  %32s   %14.2f mWs\\n", "[" + name + "]:" + subsystem,
  static_cast<float>(energyUWs) / 1000.0)``. Older AIDL builds print ``%18s`` and the bare channel
  name; the HIDL 1.0 HAL (``lshal debug android.hardware.power.stats@1.0::IPowerStats/default``)
  prints ``PowerStats HAL 1.0 rail energy data`` with ``"  %14s   %18s   %14.2f mWs"`` (subsystem, rail).
- the value is cumulative since boot. The HAL casts the int64 µWs counter to **float32** before
  printing: above 2^24 µWs (16.8 J, i.e. seconds after boot) the printed value is a float32
  rounding, e.g. ±4 mJ at 10^11 µWs. The parser carries that resolution with every reading.
- ``dumpsys ... delta`` (not used by the runners: it keeps state inside the HAL that other tools
  rely on) adds ``Elapsed time: N ms`` and a ``(%14.2f)`` delta column after the unit; the first
  number on the line is still the cumulative one.
- no time stamps are printed (the HAL's EnergyMeasurement.timestampMs is not in the dump), so the
  runners bracket each call with CLOCK_MONOTONIC readings; the counters were read somewhere in
  that bracket. On Pixel the HAL reads ``/sys/bus/iio/devices/iio:device*/energy_value``, whose
  kernel driver (google-modules ``odpm``) refreshes its accumulators at most once per 20 ADC
  samples ("At max frequency (1 KHz), the minimum refresh time is 20 ms"): a value can be that
  much older than the call when something else read the rails just before (``ODPM_REFRESH_S``).
- there is no total line; the total is the sum of the rails. A line named ``total``/``sum`` (some
  vendor dumps) is taken as the total instead and not added to the rails.
- the energy consumers section (``"%-12s : %14.2f mWs"`` per consumer, ``"  %10d - %14.2f mWs"``
  per uid) is derived from the same rails (double counting) and is ignored.
- units other than mWs (µWs/uWs, Ws, mJ, µJ/uJ, J) are accepted for forks that print them.

No verbatim captured dump was found in the public sources searched; the test sample
(tests/test_odpm.py) is built from these format strings with rail names and counter values taken
from Pixel 6 ``/sys/bus/iio/devices/iio:device*/energy_value`` outputs quoted in public test code.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

SERVICE = "android.hardware.power.stats.IPowerStats/default"

_SECTIONS = (  # (start marker, end marker): the Pixel HAL's, AIDL first
    ("PowerStats HAL 2.0 energy meter", "End of PowerStats HAL 2.0 energy meter"),
    ("PowerStats HAL 1.0 rail energy data", "End of PowerStats HAL 1.0 rail energy data"),
)
_UNIT_J = {"": 1.0, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "μ": 1e-6, "n": 1e-9}
# "<name> <value> <unit>": the value is the first number after whitespace that a unit follows, with a
# non-empty name before it. Searched for (not matched with a lazy name and backtracking, which is
# quadratic in a line's length: a 64 KiB line of spaces took half a minute), so linear in the text.
_VALUE = re.compile(r"(?<!\S)(?P<value>[-+]?[0-9]+(?:\.(?P<dec>[0-9]*))?(?:[eE][-+]?[0-9]+)?)\s*"
                    r"(?P<prefix>[mµμun]?)(?P<kind>Ws|J)\b")
_FLOAT32_MAX = 3.4028234663852886e38  # the HAL prints float32 values: a larger one is not a reading
_TOTAL_NAMES = {"total", "sum", "[total]", "all"}


@dataclass(frozen=True)
class RailReading:
    energy_j: float  # cumulative, as printed
    sigma_j: float  # 1 sigma of the printed value: print rounding and the HAL's float32 cast


@dataclass(frozen=True)
class OdpmDump:
    section: Optional[str]  # which section was found; None = none
    rails: dict[str, RailReading] = field(default_factory=dict)
    total: Optional[RailReading] = None  # an explicit total line, when the dump has one
    unit: Optional[str] = None  # the unit as printed (mWs on Pixel)


def float32_ulp(x: float) -> float:
    """The spacing of float32 values around |x| (x in the HAL's integer unit, µWs)."""
    x = abs(x)
    if x < 2.0 ** -126:
        return 2.0 ** -149
    return 2.0 ** (math.floor(math.log2(x)) - 23)


def _reading(value: str, dec: Optional[str], prefix: str, kind: str) -> Optional[tuple[float, float]]:
    """(energy J, 1 sigma J) of one printed value; None when it cannot be a HAL reading (beyond
    float32's range in µWs, or not finite)."""
    scale = _UNIT_J[prefix]  # Ws == J
    v = float(value) * scale
    if not abs(v) * 1e6 <= _FLOAT32_MAX:  # also inf and nan
        return None
    q_print = (10.0 ** -len(dec) if dec else 1.0) * scale  # the last printed digit
    ulp = float32_ulp(v * 1e6) * 1e-6  # float32 of the µWs counter (PowerStatsAidl.cpp static_cast<float>)
    # rounding to nearest: uniform error of width q, variance q^2 / 12, for both roundings
    return v, math.hypot(q_print, ulp) / math.sqrt(12.0)


def _match_line(line: str) -> Optional[re.Match]:
    """The value and unit of a ``name value unit`` line, or None (headers, blank lines)."""
    pos = 0
    while True:
        m = _VALUE.search(line, pos)
        if m is None or line[:m.start()].strip():
            return m
        pos = m.end()


def parse(text: str) -> OdpmDump:
    """Per-rail cumulative energy (J) from a ``dumpsys ...IPowerStats/default`` text."""
    lines = text.splitlines()
    for start, end in _SECTIONS:
        begin = next((i for i, line in enumerate(lines) if start in line and "End of" not in line), None)
        if begin is None:
            continue
        rails: dict[str, RailReading] = {}
        repeats: dict[str, int] = {}
        total, unit = None, None
        for line in lines[begin + 1:]:
            if end in line or line.lstrip().startswith("====="):
                break
            m = _match_line(line)
            if not m:
                continue  # header ("Channel  Cumulative Energy"), "Elapsed time: N ms", blank
            name = line[:m.start()].strip()
            if start.startswith("PowerStats HAL 1.0"):  # "Subsys  Rail": the AIDL spelling
                parts = name.split()
                if len(parts) == 2:
                    name = f"[{parts[1]}]:{parts[0]}"
            reading = _reading(m["value"], m["dec"], m["prefix"], m["kind"])
            if reading is None:
                continue  # not a number the HAL can print: left out, so the rail is reported missing
            e, sigma = reading
            unit = unit or f"{m['prefix']}{m['kind']}"
            if name.lower() in _TOTAL_NAMES:
                total = RailReading(e, sigma)
                continue
            key, k = name, repeats.get(name, 2)
            while key in rails:  # the HAL never repeats a channel; keep both if a fork does
                key, k = f"{name}#{k}", k + 1
            repeats[name] = k
            rails[key] = RailReading(e, sigma)
        return OdpmDump(start, rails, total, unit)
    return OdpmDump(None)


# ---------------------------------------------------------------- energy per inference

METHOD = ("ODPM rails (dumpsys android.hardware.power.stats.IPowerStats/default) read at the window edges; "
          "(run - idle) power x T / iterations, T = time between the counter reads around the run")
CHARGING_NOTE = ("a charger is connected: the battery numbers are unreliable, the ODPM rails are not (they meter "
                 "regulator outputs and system-side shunts downstream of the charger), but charging heats the phone")


ODPM_REFRESH_S = 0.020  # the driver's minimum refresh interval at 1 kHz; longer at lower configured rates


@dataclass(frozen=True)
class _Channel:
    """One rail (or the total) read at the snapshots: E (J) and its 1-sigma at each."""

    e: tuple[float, ...]
    sigma: tuple[float, ...]


def _arith(ch: _Channel, t: tuple[float, ...], st: tuple[float, ...], half: tuple[float, ...], n: int,
           with_idle: bool):
    """(idle W, run W, net J/inference, 1-sigma J/inference, gross J/inference) of one channel.

    With snapshots k = 0 (idle_start), 1 (run_start), 2 (run_end) at times t_k (midpoints of the
    dumpsys calls), T_i = t1 - t0, T = t2 - t1:
        P_idle = (E1 - E0) / T_i,  P_run = (E2 - E1) / T,  net = (P_run - P_idle) T / n
    Uncertainty (1 sigma, independent terms in quadrature):
      - counter resolution: each printed value carries sigma_k (print rounding and float32 cast);
        net is linear in E: d/dE2 = 1, d/dE1 = -(1 + T/T_i), d/dE0 = T/T_i.
      - read time: the counters were read somewhere in the call's bracket [t_start, t_end], or up
        to ODPM_REFRESH_S earlier (the driver's refresh limit): sigma_t^2 = (width^2 + refresh^2)
        / 12; d/dt2 = -P_idle, d/dt1 = P_idle (1 + T/T_i), d/dt0 = -P_idle T/T_i.
      - a stale run_end read misses the run's last moments: (P_run - P_idle) refresh / sqrt(12).
      - the dumpsys calls themselves: each counter interval holds half of each bracketing call
        (g_run = h1 + h2 around the run, g_idle = h0 + h1 around the idle window) at a power
        between idle and run; that cancels when g_run = g_idle T/T_i, the rest is bounded by
        |P_run - P_idle| |g_run - g_idle T/T_i| (uniform, / sqrt(3)).
    """
    k1, k2 = (1, 2) if with_idle else (0, 1)
    T = t[k2] - t[k1]
    d_run = ch.e[k2] - ch.e[k1]
    p_run = d_run / T
    gross = d_run / n
    if not with_idle:
        return None, p_run, None, None, gross
    Ti = t[1] - t[0]
    p_idle = (ch.e[1] - ch.e[0]) / Ti
    net = (p_run - p_idle) * T / n
    r = T / Ti
    # _sq, not ** 2: a record's times and counters can be any float, and ** raises OverflowError
    var_e = _sq(ch.sigma[2]) + _sq((1 + r) * ch.sigma[1]) + _sq(r * ch.sigma[0])
    var_t = _sq(p_idle * st[2]) + _sq(p_idle * (1 + r) * st[1]) + _sq(p_idle * r * st[0])
    var_stale = _sq((p_run - p_idle) * ODPM_REFRESH_S) / 12.0
    g_run, g_idle = half[1] + half[2], half[0] + half[1]
    var_o = _sq(abs(p_run - p_idle) * abs(g_run - g_idle * r)) / 3.0
    return p_idle, p_run, net, math.sqrt(var_e + var_t + var_stale + var_o) / n, gross


def _sq(x: float) -> float:
    return x * x  # inf on overflow, where x ** 2 raises


def odpm_estimate(capture, iterations: int, *, charging: bool = False):
    """An ``EnergyEstimate`` (meter "odpm", per-rail breakdown in ``rails``) from an ``OdpmCapture``."""
    from edgeprobe.results import EnergyEstimate, RailEstimate

    def fail(reason: str) -> EnergyEstimate:
        return EnergyEstimate(None, None, None, None, None, METHOD, "none", False, f"ODPM: {reason}", meter="odpm",
                              notes=(CHARGING_NOTE,) if charging else ())

    snaps = {s.window: s for s in capture.snapshots}
    if "run_start" not in snaps or "run_end" not in snaps:
        return fail(f"the run window was not captured ({capture.reason or 'snapshots missing'})")
    order = [w for w in ("idle_start", "run_start", "run_end") if w in snaps]
    with_idle = order[0] == "idle_start"
    times = [x for w in order for x in (snaps[w].t_start_s, snaps[w].t_end_s)]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in times):
        return fail("a snapshot's time stamps are missing or not finite")
    if iterations <= 0:
        return fail(f"no iterations were timed ({iterations})")
    dumps = [parse(snaps[w].text if isinstance(snaps[w].text, str) else "") for w in order]
    for w, d in zip(order, dumps):
        if not d.rails and d.total is None:
            cut = " (its output was cut to the last 64 KiB)" if snaps[w].truncated else ""
            what = "no energy meter section" if d.section is None else "an energy meter section without rails"
            return fail(f"{what} in the {w} snapshot{cut}; this device's PowerStats HAL does not print ODPM rails")
    names = [r for r in dumps[-1].rails if all(r in d.rails for d in dumps)]
    notes = [CHARGING_NOTE] if charging else []
    partial = sorted(set().union(*(d.rails for d in dumps)) - set(names))
    if partial:
        notes.append(f"rails missing from some snapshots, left out: {', '.join(partial)}")
    if all(d.total is not None for d in dumps):
        total = _Channel(tuple(d.total.energy_j for d in dumps), tuple(d.total.sigma_j for d in dumps))
        notes.append("total as printed by the HAL")
    elif names:
        total = _Channel(tuple(sum(d.rails[r].energy_j for r in names) for d in dumps),
                         tuple(math.sqrt(sum(_sq(d.rails[r].sigma_j) for r in names)) for d in dumps))
        notes.append(f"total = sum of the {len(names)} metered rails, not the whole phone (unmetered rails, "
                     "regulator and charger losses and the battery are outside them)")
    else:
        return fail("no rail is present in every snapshot")
    t = tuple((snaps[w].t_start_s + snaps[w].t_end_s) / 2 for w in order)
    half = tuple((snaps[w].t_end_s - snaps[w].t_start_s) / 2 for w in order)
    st = tuple(math.hypot(2 * h, ODPM_REFRESH_S) / math.sqrt(12.0) for h in half)
    if any(b <= a for a, b in zip(t, t[1:])):
        return fail("snapshot times are not increasing")
    backwards = [r for r in names if any(b.rails[r].energy_j < a.rails[r].energy_j for a, b in zip(dumps, dumps[1:]))]
    rails = {}
    for r in names:
        ch = _Channel(tuple(d.rails[r].energy_j for d in dumps), tuple(d.rails[r].sigma_j for d in dumps))
        p_idle, p_run, net, sigma, _ = _arith(ch, t, st, half, iterations, with_idle)
        rails[r] = RailEstimate(p_idle, p_run, net, sigma)
    p_idle, p_run, net, sigma, gross = _arith(total, t, st, half, iterations, with_idle)
    unit = dumps[-1].unit or "mWs"
    calibration = (f"none: the HAL reports cumulative energy in {unit} (float32 of its µWs counter); read times = "
                   "midpoints of the dumpsys calls")
    problems = []
    if backwards:
        problems.append(f"the counters of {', '.join(backwards)} went backwards (HAL restarted or counter reset)")
    if not with_idle:
        problems.append("no idle baseline was measured (--idle-s 0)")
    return EnergyEstimate(net, sigma, gross, p_idle, p_run, METHOD, calibration, not problems,
                          "; ".join(f"ODPM: {p}" for p in problems) or None, meter="odpm", rails=rails,
                          notes=tuple(notes))
