"""ODPM (On-Device Power Monitor) text parser: per-rail energy from ``dumpsys ...IPowerStats/default``.

The runners capture the raw text of ``dumpsys android.hardware.power.stats.IPowerStats/default``
at the window edges (PROTOCOL.md, ``energy.odpm``); this module parses it, and ``energy.py`` does
the arithmetic (power, energy per inference, uncertainty). Importing it needs nothing outside the
standard library, and nothing else of edgeprobe.

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
# how stale a counter read can be: the driver's minimum refresh interval at 1 kHz (longer at lower
# configured rates); energy.py carries it in the read-time uncertainty
ODPM_REFRESH_S = 0.020


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
