"""ODPM power rails: the runners capture raw ``dumpsys android.hardware.power.stats.IPowerStats/default``
text at the window edges, the host parses it and derives energy per inference. No phone is
attached, so the test adbd's fake ``dumpsys`` serves a text that a test thread rewrites, advancing
every rail's counter at known powers: idle until the runner's run_start snapshot, run power until
its run_end snapshot."""

from __future__ import annotations

import math
import os
import struct
import threading
import time

import pytest

import edgeprobe
from edgeprobe import energy
from edgeprobe.odpm import SERVICE, float32_ulp, parse
from edgeprobe.results import BenchResult, EnergyReading, OdpmCapture, OdpmSnapshot
from adbd import TestAdbd
from test_energy import FakeBattery

# The shape `adb shell dumpsys android.hardware.power.stats.IPowerStats/default` prints on a Pixel 6
# (PowerStatsAidl.cpp: state residencies, energy consumers, then the energy meter, channels as
# "[rail]:subsystem" with "%32s   %14.2f mWs" of float32(µWs) / 1000). Rail names and counters are
# Pixel 6 iio energy_value readings quoted in public test code; the text is assembled from the
# HAL's format strings (no verbatim capture was found), subsystem labels are illustrative.
PIXEL6_DUMP = """
============= PowerStats HAL 2.0 state residencies ==============
            Entity                State         Total time     Total entries   Last entry tstamp
               AOC                  AOC          123456 ms              4321          9876543 ms
               AOC                  DDR            2345 ms               210          9870000 ms
  DISPLAY                              On         654321 ms                12          9000000 ms
========== End of PowerStats HAL 2.0 state residencies ==========

============= PowerStats HAL 2.0 energy consumers ==============
CPU_CLUSTER  :      584357.73 mWs
       10123 -        1234.56 mWs
        1000 -       98765.43 mWs
DISPLAY      :      611687.42 mWs
GPU          :     3702041.60 mWs
MOBILE_RADIO :      179646.99 mWs
========== End of PowerStats HAL 2.0 energy consumers ==========

============= PowerStats HAL 2.0 energy meter ==============
                           Channel    Cumulative Energy
     [PPVAR_VSYS_PWR_DISP]:Display        611687.42 mWs
            [VSYS_PWR_MODEM]:Modem        179646.99 mWs
          [VSYS_PWR_RFFE]:Cellular             0.00 mWs
         [S2M_VDD_CPUCL2]:CPU(BIG)        124265.86 mWs
         [S3M_VDD_CPUCL1]:CPU(MID)        170096.35 mWs
      [S4M_VDD_CPUCL0]:CPU(LITTLE)        289995.52 mWs
                 [S5M_VDD_INT]:INT        190164.70 mWs
                 [S1M_VDD_MIF]:MIF        196512.90 mWs
        [VSYS_PWR_WLAN_BT]:WLAN-BT     192612466.69 mWs
             [L2S_VDD_AOC_RET]:AOC       1393792.90 mWs
                 [S9S_VDD_AOC]:AOC      16816975.87 mWs
                [S5S_VDDQ_MEM]:DDR       2720913.92 mWs
                  [S10S_VDD2L]:DDR       3656592.38 mWs
               [S4S_VDD2H_MEM]:DDR       4597272.06 mWs
                 [S2S_VDD_G3D]:GPU       3702041.60 mWs
              [L9S_GNSS_CORE]:GNSS         88535.06 mWs
========== End of PowerStats HAL 2.0 energy meter ==========
"""


def test_parser_on_a_pixel_dump():
    d = parse(PIXEL6_DUMP)
    assert d.section == "PowerStats HAL 2.0 energy meter" and d.unit == "mWs" and d.total is None
    assert len(d.rails) == 16  # the consumers section (CPU_CLUSTER, per-uid lines) is not read as rails
    assert "CPU_CLUSTER" not in str(list(d.rails)) and "10123" not in str(list(d.rails))
    assert list(d.rails)[:4] == ["[PPVAR_VSYS_PWR_DISP]:Display", "[VSYS_PWR_MODEM]:Modem",
                                 "[VSYS_PWR_RFFE]:Cellular", "[S2M_VDD_CPUCL2]:CPU(BIG)"]
    big = d.rails["[S2M_VDD_CPUCL2]:CPU(BIG)"]
    assert big.energy_j == pytest.approx(124.26586, abs=1e-9)
    # below 2^27 µWs the float32 cast is exact to 8 µWs: the 10 µWs print rounding dominates
    assert big.sigma_j == pytest.approx(math.sqrt((10e-6) ** 2 + (8e-6) ** 2) / math.sqrt(12))
    wlan = d.rails["[VSYS_PWR_WLAN_BT]:WLAN-BT"]
    assert wlan.energy_j == pytest.approx(192612.46669)
    assert wlan.sigma_j == pytest.approx(16384e-6 / math.sqrt(12), rel=1e-3)  # float32 ulp at 1.9e11 µWs
    assert d.rails["[VSYS_PWR_RFFE]:Cellular"].energy_j == 0.0


def test_parser_variants_hidl_delta_units_total_and_absent():
    hidl = ("\n============= PowerStats HAL 1.0 rail energy data ==============\n"
            "          Subsys                 Rail    Cumulative Energy\n"
            "        CPU(BIG)       S2M_VDD_CPUCL2        124265.86 mWs\n"
            "             GPU          S2S_VDD_G3D       3702041.60 mWs\n"
            "========== End of PowerStats HAL 1.0 rail energy data ==========\n")
    d = parse(hidl)
    assert d.section == "PowerStats HAL 1.0 rail energy data"
    assert d.rails["[S2M_VDD_CPUCL2]:CPU(BIG)"].energy_j == pytest.approx(124.26586)
    delta = ("============= PowerStats HAL 2.0 energy meter ==============\nElapsed time: 1002 ms\n"
             "                           Channel    Cumulative Energy (      Delta   )\n"
             "         [S2M_VDD_CPUCL2]:CPU(BIG)        124265.86 mWs (        812.50)\n"
             "========== End of PowerStats HAL 2.0 energy meter ==========\n")
    assert parse(delta).rails["[S2M_VDD_CPUCL2]:CPU(BIG)"].energy_j == pytest.approx(124.26586)
    units = ("============= PowerStats HAL 2.0 energy meter ==============\n"
             "  [A]:X   1500000 uWs\n  [B]:Y   2.5 Ws\n  [C]:Z   300 mJ\n  [D]:W   7 µJ\n  Total   4.300007 J\n"
             "========== End of PowerStats HAL 2.0 energy meter ==========\n")
    u = parse(units)
    assert {k: v.energy_j for k, v in u.rails.items()} == pytest.approx(
        {"[A]:X": 1.5, "[B]:Y": 2.5, "[C]:Z": 0.3, "[D]:W": 7e-6})
    assert u.total.energy_j == pytest.approx(4.300007)
    assert u.rails["[A]:X"].sigma_j == pytest.approx(math.sqrt(1e-12 + float32_ulp(1.5e6) ** 2 * 1e-12) / math.sqrt(12))
    assert parse("Can't find service: x\n").section is None and not parse("").rails


def _capture(powers_w, t_idle, t_run, bracket=0.02, start_j=1000.0):
    """Three snapshots: idle from 0 for t_idle s, run for t_run s; each call takes ``bracket`` s and
    the counters are read at its midpoint."""
    times = [0.0, t_idle, t_idle + t_run]
    snaps, energy = [], dict.fromkeys(powers_w, start_j)
    for k, (w, t) in enumerate(zip(("idle_start", "run_start", "run_end"), times, strict=True)):
        if k:
            phase = "idle" if k == 1 else "run"
            for r in energy:
                energy[r] += powers_w[r][phase] * (times[k] - times[k - 1])
        body = "".join(f"  {r:>32s}   {energy[r] * 1e3:14.2f} mWs\n" for r in energy)
        text = ("============= PowerStats HAL 2.0 energy meter ==============\n" + body +
                "========== End of PowerStats HAL 2.0 energy meter ==========\n")
        snaps.append(OdpmSnapshot(w, t - bracket / 2, t + bracket / 2, text, len(text)))
    return OdpmCapture(True, None, SERVICE, tuple(snaps))


def test_odpm_arithmetic_and_uncertainty():
    # big core 0.1 W idle -> 2.1 W run, MIF 0.3 -> 0.5 W over a 1 s run, 100 inferences:
    # (2.6 - 0.4) W x 1 s / 100 = 22 mJ; per rail 20 mJ and 2 mJ
    powers = {"[S2M_VDD_CPUCL2]:CPU(BIG)": {"idle": 0.1, "run": 2.1}, "[S1M_VDD_MIF]:MIF": {"idle": 0.3, "run": 0.5}}
    e = EnergyReading(False, reason="no battery", odpm=_capture(powers, 1.0, 1.0))
    est = e.estimate(100)
    assert est.meter == "odpm" and est.reliable and est.reason is None
    assert est.idle_power_w == pytest.approx(0.4, abs=1e-4) and est.run_power_w == pytest.approx(2.6, abs=1e-4)
    assert est.per_inference_j == pytest.approx(0.022, abs=1e-6) and est.gross_per_inference_j == pytest.approx(0.026)
    assert est.rails["[S2M_VDD_CPUCL2]:CPU(BIG)"].per_inference_j == pytest.approx(0.020, abs=1e-6)
    assert est.rails["[S1M_VDD_MIF]:MIF"].per_inference_j == pytest.approx(0.002, abs=1e-6)
    # equal windows: the dumpsys overhead cancels; what is left is the read time (20 ms brackets,
    # 20 ms driver refresh), a possibly stale run_end read (2.2 W x 20 ms / sqrt(12)) and the
    # counter resolution: under 1 % here
    stale = 2.2 * 0.020 / math.sqrt(12) / 100
    assert stale < est.uncertainty_j < 0.01 * est.per_inference_j
    # unequal windows leave an overhead term: |P_run - P_idle| x |g_run - g_idle T/T_i| / sqrt(3)
    short_idle = EnergyReading(False, odpm=_capture(powers, 0.5, 1.0)).estimate(100)
    assert short_idle.per_inference_j == pytest.approx(0.022, abs=1e-5)
    overhead = 2.2 * abs(0.02 - 0.02 * 2) / math.sqrt(3) / 100
    assert math.hypot(overhead, stale) < short_idle.uncertainty_j < 1.2 * math.hypot(overhead, stale)
    # no idle snapshot (--idle-s 0): gross only
    cap = _capture(powers, 1.0, 1.0)
    no_idle = EnergyReading(False, odpm=OdpmCapture(True, None, SERVICE, cap.snapshots[1:])).estimate(100)
    assert no_idle.per_inference_j is None and no_idle.gross_per_inference_j == pytest.approx(0.026)
    assert not no_idle.reliable and "idle baseline" in no_idle.reason
    # no energy meter section: the reason says so; no snapshots at all: no estimate
    empty = tuple(OdpmSnapshot(s.window, s.t_start_s, s.t_end_s, "nothing here\n") for s in cap.snapshots)
    bad = EnergyReading(False, odpm=OdpmCapture(True, None, SERVICE, empty)).estimate(100)
    assert bad.per_inference_j is None and "no energy meter section" in bad.reason
    assert EnergyReading(False, odpm=OdpmCapture(False, "no dumpsys binary on PATH")).estimate(100) is None


def test_odpm_arithmetic_lives_in_energy_and_the_record_delegates():
    powers = {"[S2M_VDD_CPUCL2]:CPU(BIG)": {"idle": 0.1, "run": 2.1}}
    cap = _capture(powers, 1.0, 1.0)
    direct = energy.odpm_estimate(cap, 100)
    assert direct == EnergyReading(False, odpm=cap).estimate(100) and direct.method == energy.ODPM_METHOD
    assert direct.per_inference_j == pytest.approx(0.020, abs=1e-6) and not direct.notes[:-1]
    charged = energy.odpm_estimate(cap, 100, charging=True)
    assert charged.notes[0] == energy.ODPM_CHARGING_NOTE and charged.per_inference_j == direct.per_inference_j
    assert EnergyReading(False, charger_online=True, odpm=cap).estimate(100) == charged


def test_odpm_is_preferred_over_battery_and_both_are_kept():
    powers = {"[S2M_VDD_CPUCL2]:CPU(BIG)": {"idle": 0.1, "run": 2.1}}
    idle = [(0.01 * k, 100, 4000) for k in range(100)]
    run = [(1.0 + 0.01 * k, 300, 4000) for k in range(100)]
    e = EnergyReading(True, meter="battery", duration_s=1.0, raw_samples=tuple(idle + run),
                      window={"idle_start_s": 0.0, "idle_end_s": 1.0, "run_start_s": 1.0, "run_end_s": 2.0},
                      supply_status="Charging", charger_online=True, odpm=_capture(powers, 1.0, 1.0))
    both = e.estimates(100)
    assert set(both) == {"odpm", "battery"}
    assert e.estimate(100) == both["odpm"] and both["odpm"].reliable  # charging does not touch the rails
    assert any("charger" in n for n in both["odpm"].notes)
    assert not both["battery"].reliable and "charger" in both["battery"].reason
    assert both["battery"].per_inference_j == pytest.approx(0.008)
    # an unreliable ODPM reading (a counter went backwards) yields to a reliable battery one
    reset = _capture({"[S2M_VDD_CPUCL2]:CPU(BIG)": {"idle": 0.1, "run": -50.0}}, 1.0, 1.0)
    e = EnergyReading(True, meter="battery", duration_s=1.0, raw_samples=tuple(idle + run), window=e.window,
                      supply_status="Discharging", charger_online=False, odpm=reset)
    assert not e.estimates(100)["odpm"].reliable and "went backwards" in e.estimates(100)["odpm"].reason
    assert e.estimate(100).meter == "battery" and e.estimate(100).reliable


def test_records_without_odpm_still_load_and_odpm_round_trips():
    e = EnergyReading(True, meter="rapl", energy_j=3.0, duration_s=1.0, idle_energy_j=1.0, idle_duration_s=0.5)
    assert e.odpm is None and e.estimate(100).meter == "rapl"
    from edgeprobe.results import from_dict, to_dict

    e2 = EnergyReading(False, reason="x", odpm=_capture({"[A]:X": {"idle": 1.0, "run": 2.0}}, 1.0, 1.0))
    assert from_dict(EnergyReading, to_dict(e2)) == e2


# ---------------------------------------------------------------- end to end, driven counters


class FakeOdpm:
    """Rewrites the test adbd's ``dumpsys.d/<ODPM service>`` every ~2 ms in the Pixel HAL's format,
    advancing each rail at its idle power, or its run power between the runner's run_start and
    run_end snapshots. The phase changes when ``dumpsys.log`` shows a call answered (within a
    poll period): what a call read is still the previous phase's, as on a phone, where the timed
    loop starts after dumpsys returns."""

    RAILS = {  # W: (idle, run)
        "[S2M_VDD_CPUCL2]:CPU(BIG)": (0.020, 0.950),
        "[S4M_VDD_CPUCL0]:CPU(LITTLE)": (0.060, 0.180),
        "[S1M_VDD_MIF]:MIF": (0.090, 0.310),
        "[VSYS_PWR_MODEM]:Modem": (0.045, 0.045),
        "[S2S_VDD_G3D]:GPU": (0.010, 0.010),
    }

    def __init__(self, adbd: TestAdbd, period_s: float = 0.002) -> None:
        self.ddir = adbd.bin / "dumpsys.d"
        self.file = self.ddir / SERVICE
        self.period_s = period_s
        self.uws = {r: 4.0e9 + 1.0e8 * k for k, r in enumerate(self.RAILS)}  # ~1 h after boot
        self.switches: list[tuple[float, str]] = []
        self._phase, self._last = "idle", time.monotonic()
        self._write()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drive, daemon=True)

    def _calls(self) -> int:
        try:
            return sum(1 for line in (self.ddir / "dumpsys.log").read_text().splitlines() if line.startswith(SERVICE))
        except FileNotFoundError:
            return 0

    def _write(self) -> None:
        f32 = lambda x: struct.unpack("f", struct.pack("f", x))[0]  # noqa: E731  the HAL's static_cast<float>
        body = "".join(f"  {r:>32s}   {f32(self.uws[r]) / 1000.0:14.2f} mWs\n" for r in self.RAILS)
        text = (PIXEL6_DUMP.split("============= PowerStats HAL 2.0 energy meter")[0] +
                "============= PowerStats HAL 2.0 energy meter ==============\n"
                f"  {'Channel':>32s}   {'Cumulative Energy':>18s}\n{body}"
                "========== End of PowerStats HAL 2.0 energy meter ==========\n")
        tmp = self.file.with_name("default.tmp")
        tmp.write_text(text)
        tmp.replace(self.file)

    def _drive(self) -> None:
        while not self._stop.wait(self.period_s):
            now = time.monotonic()
            col = 1 if self._phase == "run" else 0
            for r, p in self.RAILS.items():
                self.uws[r] += p[col] * (now - self._last) * 1e6
            self._last = now
            self._write()
            phase = "run" if self._calls() == 2 else "idle"  # 1: idle_start, 2: run_start, 3: run_end
            if phase != self._phase:
                self._phase = phase
                self.switches.append((time.monotonic(), phase))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def power_w(self, phase: str, rail=None) -> float:
        col = 1 if phase == "run" else 0
        return sum(p[col] for r, p in self.RAILS.items() if rail in (None, r))

    def run_phase_s(self) -> float:
        (t_run, a), (t_idle, b) = self.switches[:2]
        assert (a, b) == ("run", "idle")
        return t_idle - t_run


def _check(est, odpm: FakeOdpm, n: int, capture: OdpmCapture) -> None:
    assert est is not None and est.meter == "odpm" and est.reliable, est
    assert set(est.rails) == set(FakeOdpm.RAILS)
    # A power's time base is the midpoints of the dumpsys calls; where in its call the counters
    # were read is unknown, so allow half of each bracketing call (long on 2 loaded cores).
    # Energy per inference does not depend on it to first order (it subtracts P_idle x T).
    s0, s1, s2 = capture.snapshots
    mid = [(s.t_start_s + s.t_end_s) / 2 for s in (s0, s1, s2)]
    half = [(s.t_end_s - s.t_start_s) / 2 for s in (s0, s1, s2)]
    idle_tol = 0.03 + (half[0] + half[1]) / (mid[1] - mid[0])
    run_tol = 0.03 + (half[1] + half[2]) / (mid[2] - mid[1])
    assert est.idle_power_w == pytest.approx(odpm.power_w("idle"), rel=idle_tol)
    assert est.run_power_w == pytest.approx(odpm.power_w("run"), rel=run_tol)
    for r in ("[S2M_VDD_CPUCL2]:CPU(BIG)", "[S1M_VDD_MIF]:MIF"):
        assert est.rails[r].run_power_w == pytest.approx(odpm.power_w("run", r), rel=run_tol + 0.02)
        assert est.rails[r].idle_power_w == pytest.approx(odpm.power_w("idle", r), rel=idle_tol + 0.02)
    expected = (odpm.power_w("run") - odpm.power_w("idle")) * odpm.run_phase_s() / n
    assert est.per_inference_j == pytest.approx(expected, rel=0.05)
    assert 0 < est.uncertainty_j < 0.05 * est.per_inference_j
    assert est.rails["[VSYS_PWR_MODEM]:Modem"].per_inference_j == pytest.approx(0.0, abs=0.01 * expected)


@pytest.mark.parametrize("runner", ["native", "python"])
def test_odpm_against_driven_counters(runner, native_runner, tiny_pte, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_SYSFS_ROOT", str(tmp_path / "sys"))  # no battery: ODPM only
    with TestAdbd(tmp_path / "dev", dumpsys={SERVICE: ""}) as d:
        only = tmp_path / "bin"  # the adbd's fake dumpsys alone on PATH (not its getprop)
        only.mkdir()
        (only / "dumpsys").symlink_to(d.bin / "dumpsys")
        monkeypatch.setenv("PATH", f"{only}{os.pathsep}{os.environ['PATH']}")
        with FakeOdpm(d) as odpm:
            r = edgeprobe.bench(tiny_pte, runner=runner, iterations=1, warmup=0, min_seconds=1.0)
        assert r.ok, r.run.error
        e = r.run.energy
        assert not e.available and "battery" in e.reason
        assert e.odpm.available and e.odpm.reason is None and e.odpm.service == SERVICE
        assert [s.window for s in e.odpm.snapshots] == ["idle_start", "run_start", "run_end"]
        assert all(s.t_start_s < s.t_end_s and not s.truncated and s.size_bytes == len(s.text.encode())
                   for s in e.odpm.snapshots)
        calls = (d.bin / "dumpsys.d" / "dumpsys.log").read_text().splitlines()
        assert [c for c in calls if "IPowerStats" in c] == [SERVICE] * 3  # also: the probe's battery, thermalservice
        n = len(r.run.timing.iteration_ns)
        _check(e.estimate(n), odpm, n, e.odpm)
        assert BenchResult.from_json(r.to_json()).run.energy == e


def test_odpm_unavailable_reasons(native_runner, tiny_pte, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_SYSFS_ROOT", str(tmp_path / "sys"))
    r = edgeprobe.bench(tiny_pte, iterations=1, warmup=0)
    assert r.ok and not r.run.energy.odpm.available and "no dumpsys" in r.run.energy.odpm.reason
    with TestAdbd(tmp_path / "dev", dumpsys={"battery": "x"}) as d:  # dumpsys, but no PowerStats HAL
        monkeypatch.setenv("PATH", f"{d.bin}{os.pathsep}{os.environ['PATH']}")
        for runner in ("native", "python"):
            r = edgeprobe.bench(tiny_pte, runner=runner, iterations=1, warmup=0)
            o = r.run.energy.odpm
            assert r.ok and not o.available and o.snapshots == ()
            assert "Can't find service" in o.reason and o.reason.startswith("idle_start:"), o.reason
            assert r.run.energy.estimate(1) is None


@pytest.fixture()
def adb_key(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_ADB_KEY", str(tmp_path / "keys" / "adbkey"))


def test_odpm_over_adb_while_charging(tmp_path, adb_key, native_runner, tiny_pte):
    """The whole path: the native runner pushed over the real ADB protocol, a charging fake battery
    and driven ODPM rails; ODPM is preferred and reliable, the battery reading is kept, unreliable."""
    sysfs = tmp_path / "sys"
    with FakeBattery(sysfs, [350_000, 420_000], usb_online=True, status="Charging"), \
            TestAdbd(tmp_path / "dev", env={"EDGEPROBE_SYSFS_ROOT": str(sysfs)}, dumpsys={SERVICE: ""}) as d, \
            FakeOdpm(d) as odpm:
        r = edgeprobe.bench(tiny_pte, device=f"adb:127.0.0.1:{d.port}", iterations=1, warmup=0, min_seconds=1.0)
    assert r.ok, r.run.error
    assert r.run.runner.flavor == "native"
    e = r.run.energy
    assert e.available and e.meter == "battery" and e.charger_online is True
    w = e.window
    assert w["idle_start_s"] < w["idle_end_s"] < w["run_start_s"] < w["run_end_s"]  # ODPM call between the windows
    n = len(r.run.timing.iteration_ns)
    both = e.estimates(n)
    assert e.estimate(n) == both["odpm"]
    _check(both["odpm"], odpm, n, e.odpm)
    assert any("charger" in note for note in both["odpm"].notes)
    assert not both["battery"].reliable and "charger" in both["battery"].reason
