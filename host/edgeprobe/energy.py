"""Energy per inference from a record's meter readings: battery, RAPL and ODPM arithmetic, with uncertainties.

Every estimate is (run power - idle power) x run time / iterations, with the method, the
calibration applied and a 1-sigma uncertainty. The inputs are the records of ``results.py``
(``EnergyReading``, ``OdpmCapture``), read by attribute; this module imports only the standard
library and the ODPM text parser (``odpm.py``), so ``results`` can use it without a cycle.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from edgeprobe.odpm import ODPM_REFRESH_S, parse

if TYPE_CHECKING:  # annotations only: results imports this module
    from edgeprobe.results import EnergyReading, OdpmCapture


@dataclass(frozen=True)
class RailEstimate:
    """One ODPM rail's share of an EnergyEstimate (same arithmetic as the total)."""

    idle_power_w: Optional[float]
    run_power_w: float
    per_inference_j: Optional[float]
    uncertainty_j: Optional[float]


@dataclass(frozen=True)
class EnergyEstimate:
    """Energy per inference derived on the host from an EnergyReading (see ``estimate``)."""

    per_inference_j: Optional[float]  # (run power - idle power) x run time / iterations; None without a baseline
    uncertainty_j: Optional[float]  # 1 sigma of per_inference_j (sample spread, or counter resolution + timing for ODPM)
    gross_per_inference_j: Optional[float]  # run energy / iterations, idle not subtracted
    idle_power_w: Optional[float]
    run_power_w: Optional[float]
    method: str
    calibration: str
    reliable: bool
    reason: Optional[str] = None  # why it is unreliable
    meter: Optional[str] = None  # odpm | battery | rapl
    rails: dict[str, RailEstimate] = field(default_factory=dict)  # odpm: per rail ("[S2M_VDD_CPUCL2]:CPU(BIG)")
    notes: tuple[str, ...] = ()  # caveats that do not make the number unreliable


# ---------------------------------------------------------------- choosing a meter


def estimate(reading: EnergyReading, iterations: int) -> Optional[EnergyEstimate]:
    """Energy per inference from ``reading``; None when no meter was available.

    ODPM is preferred when its rails parse (it meters the rails directly, with counters, and a
    charger does not enter them), unless it is unreliable and the sysfs meter (RAPL or
    battery) is not. Both stay in the record: ``estimates`` gives every meter's estimate."""
    found = estimates(reading, iterations)
    odpm = found.get("odpm")
    odpm = odpm if odpm is not None and odpm.run_power_w is not None else None
    sysfs = found.get(reading.meter or "")
    if odpm is not None and (odpm.reliable or sysfs is None or not sysfs.reliable):
        return odpm
    return sysfs or found.get("odpm")


def estimates(reading: EnergyReading, iterations: int) -> dict[str, EnergyEstimate]:
    """Every meter's estimate, keyed by meter: ``odpm`` and/or ``battery`` | ``rapl``."""
    out: dict[str, EnergyEstimate] = {}
    if reading.odpm is not None and reading.odpm.snapshots and iterations > 0:
        out["odpm"] = odpm_estimate(reading.odpm, iterations, charging=charging(reading))
    sysfs = sysfs_estimate(reading, iterations)
    if sysfs is not None:
        out[sysfs.meter or "sysfs"] = sysfs
    return out


def charging(reading: EnergyReading) -> bool:
    """A charger was connected (online, or the battery reported Charging | Full)."""
    return bool(reading.charger_online) or (reading.supply_status or "").lower() in ("charging", "full")


def sysfs_estimate(reading: EnergyReading, iterations: int) -> Optional[EnergyEstimate]:
    """The sysfs meter's estimate (battery samples, or a RAPL-style energy counter); None
    without one."""
    if not reading.available or iterations <= 0 or not reading.duration_s:
        return None
    if reading.meter == "battery":
        return battery_estimate(reading, iterations)
    return counter_estimate(reading, iterations)


# ---------------------------------------------------------------- RAPL (energy counters)


def counter_estimate(reading: EnergyReading, iterations: int) -> EnergyEstimate:
    """An energy-counter meter (RAPL powercap): run window energy, idle window subtracted."""
    energy_j, duration_s = reading.energy_j, reading.duration_s
    gross = energy_j / iterations if energy_j is not None else None
    run_w = energy_j / duration_s if energy_j is not None else None
    if reading.idle_energy_j is None or not reading.idle_duration_s or run_w is None:
        return EnergyEstimate(None, None, gross, None, run_w, f"{reading.method}; no idle baseline", "none", False,
                              "no idle baseline was measured (--idle-s 0)", meter=reading.meter)
    idle_w = reading.idle_energy_j / reading.idle_duration_s
    net = (run_w - idle_w) * duration_s / iterations
    return EnergyEstimate(net, None, gross, idle_w, run_w, f"{reading.method}; idle window subtracted",
                          "none (counters in µJ)", True, None, meter=reading.meter)


# ---------------------------------------------------------------- battery (current x voltage samples)

BATTERY_MA_BELOW = 10_000  # |idle current_now| below this is in mA, not µA (no phone idles under 10 mA)
BATTERY_MV_BELOW = 100_000  # voltage_now below this is in mV, not µV
BATTERY_METHOD = "battery current_now x voltage_now, 10 ms samples; (run - idle) power x run time / iterations"


def _mean_var(xs: typing.Sequence[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0)


def battery_estimate(reading: EnergyReading, iterations: int) -> EnergyEstimate:
    """Battery ``raw_samples`` (t_s, current_now, voltage_now): units and discharge sign
    calibrated from the idle median, sample spread as the uncertainty."""
    w = reading.window
    # idle_end_s (newer runners): an ODPM snapshot between the windows belongs to neither
    idle = [s for s in reading.raw_samples if w and w["idle_start_s"] <= s[0] < w.get("idle_end_s", w["run_start_s"])]
    run = [s for s in reading.raw_samples if w and w["run_start_s"] <= s[0] <= w["run_end_s"]]
    method = BATTERY_METHOD
    if not run:
        return EnergyEstimate(None, None, None, None, None, method, "none", False,
                              "no battery samples fell in the run window (the run was shorter than 10 ms?)",
                              meter="battery")
    ref = idle or run
    med_i = sorted(s[1] for s in ref)[len(ref) // 2]
    med_v = sorted(s[2] for s in ref)[len(ref) // 2]
    i_scale, i_unit = (1e-3, "mA") if abs(med_i) < BATTERY_MA_BELOW else (1e-6, "µA")
    v_scale, v_unit = (1e-3, "mV") if med_v < BATTERY_MV_BELOW else (1e-6, "µV")
    sign = -1.0 if med_i < 0 else 1.0  # discharge current counted positive
    calibration = (f"current in {i_unit}, voltage in {v_unit} (by magnitude); discharge sign "
                   f"{'negative' if sign < 0 else 'positive'} (from the {'idle' if idle else 'run'} median)")

    def power(xs):
        return [sign * s[1] * i_scale * s[2] * v_scale for s in xs]

    run_w, run_var = _mean_var(power(run))
    gross = run_w * reading.duration_s / iterations
    problems = []
    if charging(reading):
        problems.append("a charger is connected (USB?): the battery current includes the charger's")
    if med_i == 0:
        problems.append("the battery current reads 0: no calibration possible")
    if not idle:
        problems.append("no idle baseline was measured (--idle-s 0)")
        return EnergyEstimate(None, None, gross, None, run_w, method, calibration, False, "; ".join(problems),
                              meter="battery")
    idle_w, idle_var = _mean_var(power(idle))
    net = (run_w - idle_w) * reading.duration_s / iterations
    sigma = (run_var / len(run) + idle_var / len(idle)) ** 0.5 * reading.duration_s / iterations
    return EnergyEstimate(net, sigma, gross, idle_w, run_w, method, calibration, not problems,
                          "; ".join(problems) or None, meter="battery")


# ---------------------------------------------------------------- ODPM (cumulative rail counters)

ODPM_METHOD = ("ODPM rails (dumpsys android.hardware.power.stats.IPowerStats/default) read at the window edges; "
               "(run - idle) power x T / iterations, T = time between the counter reads around the run")
ODPM_CHARGING_NOTE = ("a charger is connected: the battery numbers are unreliable, the ODPM rails are not (they "
                      "meter regulator outputs and system-side shunts downstream of the charger), but charging "
                      "heats the phone")


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


def odpm_estimate(capture: OdpmCapture, iterations: int, *, charging: bool = False) -> EnergyEstimate:
    """An estimate (meter "odpm", per-rail breakdown in ``rails``) from an ``OdpmCapture``'s snapshots."""

    def fail(reason: str) -> EnergyEstimate:
        return EnergyEstimate(None, None, None, None, None, ODPM_METHOD, "none", False, f"ODPM: {reason}",
                              meter="odpm", notes=(ODPM_CHARGING_NOTE,) if charging else ())

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
    notes = [ODPM_CHARGING_NOTE] if charging else []
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
    return EnergyEstimate(net, sigma, gross, p_idle, p_run, ODPM_METHOD, calibration, not problems,
                          "; ".join(f"ODPM: {p}" for p in problems) or None, meter="odpm", rails=rails,
                          notes=tuple(notes))
