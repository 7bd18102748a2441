"""Energy on battery-powered devices: the runners sample a battery's current_now/voltage_now raw
(idle baseline, then the run), the host calibrates sign and unit and derives energy per
inference with an uncertainty. No phone is attached, so a fake sysfs battery is driven by a test
thread whose every write is logged; the expected powers come from that log."""

from __future__ import annotations

import bisect
import threading
import time

import pytest

import edgeprobe
from edgeprobe import energy, results
from edgeprobe.results import EnergyReading


class FakeBattery:
    """/sys/class/power_supply/{battery,usb}; current in µA, negative while discharging (Pixel-like)."""

    def __init__(self, root, currents_ua, voltage_uv=3_900_000, period_s=0.2, usb_online=False, status="Discharging"):
        self.dir = root / "class/power_supply/battery"
        self.dir.mkdir(parents=True)
        usb = root / "class/power_supply/usb"
        usb.mkdir(parents=True)
        (usb / "type").write_text("USB\n")
        (usb / "online").write_text("1\n" if usb_online else "0\n")
        (self.dir / "type").write_text("Battery\n")
        (self.dir / "status").write_text(status + "\n")
        (self.dir / "voltage_now").write_text(f"{voltage_uv}\n")
        self.voltage_uv, self.currents, self.period_s = voltage_uv, currents_ua, period_s
        self.log: list[tuple[float, int]] = []
        self._write(currents_ua[0])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drive, daemon=True)

    def _write(self, ua: int) -> None:
        tmp = self.dir / "current_now.tmp"
        tmp.write_text(f"{ua}\n")
        tmp.replace(self.dir / "current_now")
        self.log.append((time.monotonic(), ua))

    def _drive(self) -> None:
        k = 0
        while not self._stop.wait(self.period_s):
            k += 1
            self._write(self.currents[k % len(self.currents)])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def value_at(self, t: float) -> int:
        i = bisect.bisect_right([w[0] for w in self.log], t) - 1
        return self.log[max(i, 0)][1]

    def mean_power_w(self, a: float, b: float) -> float:
        """Exact time-weighted mean of the driven power over [a, b] (discharge positive)."""
        times = [a] + [t for t, _ in self.log if a < t < b] + [b]
        energy = sum(-self.value_at(t0) * 1e-6 * self.voltage_uv * 1e-6 * (t1 - t0) for t0, t1 in zip(times, times[1:]))
        return energy / (b - a)


@pytest.mark.parametrize("runner", ["native", "python"])
def test_battery_energy_against_a_driven_fake_sysfs(runner, native_runner, tiny_pte, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_SYSFS_ROOT", str(tmp_path / "sys"))
    with FakeBattery(tmp_path / "sys", [-200_000, -900_000, -450_000, -1_300_000]) as bat:
        r = edgeprobe.bench(tiny_pte, runner=runner, iterations=1, warmup=0, min_seconds=1.0)
    assert r.ok, r.run.error
    e = r.run.energy
    assert e.available and e.meter == "battery" and e.supply == "battery" and e.charger_online is False
    w = e.window
    assert w["idle_start_s"] < w["run_start_s"] < w["run_end_s"] and w["run_start_s"] - w["idle_start_s"] >= 0.95
    # every raw sample is a value the thread wrote at about that moment (the log lags the write)
    for t, ua, uv in e.raw_samples:
        assert uv == bat.voltage_uv
        assert ua in (bat.value_at(t - 0.05), bat.value_at(t), bat.value_at(t + 0.05)), (t, ua)
    n = len(r.run.timing.iteration_ns)
    est = e.estimate(n)
    assert est.reliable and est.reason is None
    assert "µA" in est.calibration and "negative" in est.calibration
    idle_expected = bat.mean_power_w(w["idle_start_s"], w["run_start_s"])
    run_expected = bat.mean_power_w(w["run_start_s"], w["run_end_s"])
    # 10 ms sampling of 200 ms steps: each step edge can be misattributed by one sample
    assert est.idle_power_w == pytest.approx(idle_expected, rel=0.08)
    assert est.run_power_w == pytest.approx(run_expected, rel=0.08)
    assert est.per_inference_j == pytest.approx((est.run_power_w - est.idle_power_w) * e.duration_s / n)
    assert est.uncertainty_j > 0  # the driven current varies within each window


def test_charging_marks_the_reading_unreliable(native_runner, tiny_pte, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_SYSFS_ROOT", str(tmp_path / "sys"))
    with FakeBattery(tmp_path / "sys", [350_000], usb_online=True, status="Charging"):
        r = edgeprobe.bench(tiny_pte, iterations=1, warmup=0, min_seconds=0.2)
    est = r.run.energy.estimate(len(r.run.timing.iteration_ns))
    assert not est.reliable and "charger" in est.reason
    assert r.run.energy.supply_status == "Charging" and r.run.energy.charger_online is True


def test_calibration_arithmetic_mA_positive_sign():
    # 100 mA idle, 300 mA during 0.5 s of run at 4000 mV, 10 inferences: (1.2 - 0.4) W x 0.5 s / 10 = 40 mJ
    idle = [(0.01 * k, 100, 4000) for k in range(50)]
    run = [(0.5 + 0.01 * k, 300, 4000) for k in range(50)]
    e = EnergyReading(True, meter="battery", duration_s=0.5, window={"idle_start_s": 0.0, "run_start_s": 0.5,
                      "run_end_s": 1.0}, raw_samples=tuple(idle + run), supply_status="Discharging", charger_online=False)
    est = e.estimate(10)
    assert "mA" in est.calibration and "mV" in est.calibration and "positive" in est.calibration
    assert est.idle_power_w == pytest.approx(0.4) and est.run_power_w == pytest.approx(1.2)
    assert est.per_inference_j == pytest.approx(0.04) and est.uncertainty_j == pytest.approx(0.0)
    assert est.reliable
    no_idle = EnergyReading(True, meter="battery", duration_s=0.5, window={"idle_start_s": 0.5, "run_start_s": 0.5,
                            "run_end_s": 1.0}, raw_samples=tuple(run))
    est = no_idle.estimate(10)
    assert est.per_inference_j is None and est.gross_per_inference_j == pytest.approx(0.06) and not est.reliable


def test_rapl_idle_baseline_is_subtracted():
    e = EnergyReading(True, meter="rapl", energy_j=3.0, duration_s=1.0, idle_energy_j=1.0, idle_duration_s=0.5,
                      method="powercap energy counter delta")
    est = e.estimate(100)
    assert est.idle_power_w == 2.0 and est.run_power_w == 3.0 and est.per_inference_j == pytest.approx(0.01)


def test_energy_module_is_what_the_record_delegates_to():
    # energy.py does the arithmetic; EnergyReading.estimate/estimates/energy_per_inference_j keep
    # working for callers (cli, tests), and results re-exports the estimate records
    assert results.EnergyEstimate is energy.EnergyEstimate and results.RailEstimate is energy.RailEstimate
    rapl = EnergyReading(True, meter="rapl", energy_j=3.0, duration_s=1.0, idle_energy_j=1.0, idle_duration_s=0.5,
                         method="powercap energy counter delta")
    assert energy.estimate(rapl, 100) == rapl.estimate(100) == energy.counter_estimate(rapl, 100)
    assert energy.estimates(rapl, 100) == rapl.estimates(100) == {"rapl": rapl.estimate(100)}
    assert rapl.energy_per_inference_j(100) == pytest.approx(0.01)
    idle = [(0.01 * k, -100_000, 4_000_000) for k in range(50)]  # µA, negative while discharging; µV
    run = [(0.5 + 0.01 * k, -300_000, 4_000_000) for k in range(50)]
    bat = EnergyReading(True, meter="battery", duration_s=0.5, raw_samples=tuple(idle + run),
                        window={"idle_start_s": 0.0, "run_start_s": 0.5, "run_end_s": 1.0}, supply_status="Full")
    est = energy.battery_estimate(bat, 10)
    assert est == bat.estimate(10) == energy.sysfs_estimate(bat, 10)
    assert "µA" in est.calibration and "µV" in est.calibration and "negative" in est.calibration
    assert est.per_inference_j == pytest.approx(0.04) and energy.charging(bat) and "charger" in est.reason
    assert energy.sysfs_estimate(EnergyReading(False, reason="no meter"), 10) is None
    assert energy.sysfs_estimate(bat, 0) is None and energy.estimates(bat, 0) == {}


# ---------------------------------------------------------------- RAPL counters that cannot be read (issue 11, finding 12)

import json
import os
import subprocess
import threading as _threading

from edgeprobe_runner import meters


def _rapl_domain(root, energy="1000", max_range="262143328850"):
    dom = root / "class/powercap/intel-rapl:0"
    dom.mkdir(parents=True)
    (dom / "name").write_text("package-0\n")
    if max_range is not None:
        (dom / "max_energy_range_uj").write_text(max_range + "\n")
    if energy is not None:
        (dom / "energy_uj").write_text(energy + "\n")
    return dom


class FifoCounter:
    """energy_uj as a named pipe: each read by the runner gets the next value of ``values``; after the
    last one the pipe is removed (the counter vanishes), so what every read returns is decided here."""

    def __init__(self, dom, values):
        self.path = dom / "energy_uj"
        os.mkfifo(self.path)
        self.values, self.served = list(values), 0
        self._stop = _threading.Event()
        self._thread = _threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        for v in self.values:
            while not self._stop.is_set():
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader opens it
                    break
                except OSError:
                    time.sleep(0.001)
            else:
                return
            os.write(fd, f"{v}\n".encode())
            os.close(fd)
            self.served += 1
            time.sleep(0.3)  # the reader has read to EOF and closed before the next value is offered
        # vanish: new opens fail at once; a reader already blocked in open() gets an empty read
        gone = self.path.with_name(".gone")
        self.path.rename(gone)
        try:
            os.close(os.open(gone, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        gone.unlink()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.mark.parametrize("values,word", [
    (["1000", "2000"], "could not be read at run_end"),  # probe, run_start; then the counter vanishes
    (["5000", "5000", "1000"], "max_energy_range_uj is unreadable"),  # went down, no range to undo the wrap
    (["1000", "2000", "3x00"], "could not be read at run_end"),  # garbled (strtoll took the "3")
])
def test_native_rapl_unreadable_counter_is_unavailable(native_runner, tiny_pte, tmp_path, monkeypatch, values, word):
    """Before: an unreadable energy_uj was read as 0, 0 - 2000 < 0 was taken for a wrap and
    max_energy_range_uj added: ~262 kJ reported as an available measurement."""
    root = tmp_path / "sys"
    dom = _rapl_domain(root, energy=None, max_range=None if "range" in word else "262143328850")
    fifo = FifoCounter(dom, values)
    monkeypatch.setenv("EDGEPROBE_SYSFS_ROOT", str(root))
    out = tmp_path / "r.json"
    try:  # the runner alone: the host's device checks read sysfs too
        p = subprocess.run([str(native_runner), "--model", str(tiny_pte.model_path), "--iterations", "2", "--warmup", "0",
                            "--output", str(out)], capture_output=True, text=True, timeout=120)
    finally:
        fifo.close()
    assert p.returncode == 0, p.stderr
    e = json.loads(out.read_text())["energy"]
    assert fifo.served == len(values)
    assert e["available"] is False and "energy_j" not in e and word in e["reason"], e


def test_python_rapl_counter_vanishes_between_reads(tmp_path, monkeypatch):
    root = tmp_path / "sys"
    dom = _rapl_domain(root)
    monkeypatch.setenv("EDGEPROBE_SYSFS_ROOT", str(root))
    m = meters.energy_meter()
    m.begin()
    (dom / "energy_uj").unlink()
    e = m.end()
    assert e["available"] is False and "could not be read at run_end" in e["reason"] and "energy_j" not in e


def test_python_rapl_garbled_counter(tmp_path, monkeypatch):
    root = tmp_path / "sys"
    dom = _rapl_domain(root)
    monkeypatch.setenv("EDGEPROBE_SYSFS_ROOT", str(root))
    m = meters.energy_meter()
    m.begin(idle_s=0.01)
    (dom / "energy_uj").write_text("\n")  # empty: was read as 0 and then "unwrapped"
    e = m.end()
    assert e["available"] is False and "run_end" in e["reason"]


def test_python_rapl_wrap_without_a_range(tmp_path, monkeypatch):
    root = tmp_path / "sys"
    dom = _rapl_domain(root, energy="5000", max_range=None)
    monkeypatch.setenv("EDGEPROBE_SYSFS_ROOT", str(root))
    m = meters.energy_meter()
    m.begin()
    (dom / "energy_uj").write_text("1000\n")
    e = m.end()
    assert e["available"] is False and "max_energy_range_uj is unreadable" in e["reason"]
    # with the range the wrap is undone: (range - 5000 + 1000) µJ
    (dom / "max_energy_range_uj").write_text("10000\n")
    (dom / "energy_uj").write_text("5000\n")
    m = meters.energy_meter()
    m.begin()
    (dom / "energy_uj").write_text("1000\n")
    e = m.end()
    assert e["available"] is True and e["energy_j"] == pytest.approx(6000 / 1e6)
