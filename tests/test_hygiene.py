"""Device state and run hygiene: dumpsys/sysfs parsing, thresholds, core pinning, performance mode —
over the test adbd (real ADB protocol) with a fake big.LITTLE sysfs and Android's dumpsys texts."""

from __future__ import annotations

import os

import pytest

import edgeprobe
from edgeprobe.session import MeasureConfig
from edgeprobe.devices.hygiene import Session
from edgeprobe.devices.local import LocalTransport
from edgeprobe.devices.probe import parse_battery, parse_cores, parse_snapshot, parse_thermal
from edgeprobe.errors import DeviceNotReadyError, UsageError

from adbd import TestAdbd

# Shapes as printed by Android 14 (`adb shell dumpsys battery`, `dumpsys thermalservice`).
DUMPSYS_BATTERY = """Current Battery Service state:
  AC powered: false
  USB powered: {usb}
  Wireless powered: false
  Dock powered: false
  Max charging current: 0
  status: {status}
  health: 2
  present: true
  level: {level}
  scale: 100
  voltage: 4012
  temperature: 287
  technology: Li-ion
"""
DUMPSYS_THERMAL = """IsStatusOverride: false
ThermalEventListeners:
	callbacks: 1
Thermal Status: {status}
Cached temperatures:
	Temperature{{mValue=33.5, mType=0, mName=CPU0, mStatus=0}}
HAL Ready: true
"""


def fake_sysfs(root, capacities=(512, 1024), freqs=(1800000, 2850000)):
    for i, (cap, freq) in enumerate(zip(capacities, freqs, strict=True)):
        d = root / f"devices/system/cpu/cpu{i}"
        (d / "cpufreq").mkdir(parents=True)
        (d / "cpu_capacity").write_text(f"{cap}\n")
        (d / "cpufreq/cpuinfo_max_freq").write_text(f"{freq}\n")
    return root


def test_parsers():
    b = parse_battery(DUMPSYS_BATTERY.format(usb="true", status=2, level=57).splitlines())
    assert (b.level_percent, b.temperature_c, b.charging, b.source) == (57, 28.7, True, "dumpsys battery")
    b = parse_battery(DUMPSYS_BATTERY.format(usb="false", status=3, level=91).splitlines())
    assert b.charging is False
    assert parse_battery([]) is None
    assert parse_thermal(DUMPSYS_THERMAL.format(status=3).splitlines()) == 3
    assert parse_thermal(["Can't find service: thermalservice"]) is None
    snap = parse_snapshot("##cpu\ncpu0 1800000 512\ncpu1 1800000 512\ncpu2 2850000 1024\ncpu3 - -\n##battery\n##thermal\n##end\n")
    assert snap.big_cores() == ()  # cpu3 unknown: refuse to guess
    snap = parse_snapshot("##cpu\ncpu0 1800000 -\ncpu1 2850000 -\ncpu2 2850000 -\n##battery\n##thermal\n##end\n")
    assert snap.big_cores() == (1, 2)  # no capacity: fall back to max frequency
    assert parse_cores("4-7") == (4, 5, 6, 7) and parse_cores("0,2") == (0, 2)
    with pytest.raises(ValueError):
        parse_cores("big-ish")


def test_local_snapshot_reads_the_fake_sysfs(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_SYSFS_ROOT", str(fake_sysfs(tmp_path / "sys")))
    bat = tmp_path / "sys/class/power_supply/battery"
    bat.mkdir(parents=True)
    for name, value in (("type", "Battery"), ("capacity", "64"), ("temp", "301"), ("status", "Discharging")):
        (bat / name).write_text(value + "\n")
    t = LocalTransport()
    try:
        with Session(t, MeasureConfig(affinity="big", min_battery_percent=50)) as s:
            assert s.prefix == ["taskset", "2"]
        st = s.finish()
        assert st.big_cores == (1,) and st.affinity_cores == (1,)
        assert (st.battery_level_percent, st.battery_temperature_c, st.charging) == (64, 30.1, False)
        with pytest.raises(DeviceNotReadyError, match="battery at 64 %"):
            with Session(t, MeasureConfig(min_battery_percent=80)):
                pass
    finally:
        t.close()


@pytest.fixture()
def adb_key(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_ADB_KEY", str(tmp_path / "keys" / "adbkey"))


def _phone(tmp_path, *, thermal=0, level=80, perf_ok=False):
    sysfs = fake_sysfs(tmp_path / "sys")
    d = TestAdbd(tmp_path / "dev", env={"EDGEPROBE_SYSFS_ROOT": str(sysfs)},
                 dumpsys={"battery": DUMPSYS_BATTERY.format(usb="false", status=3, level=level),
                          "thermalservice": DUMPSYS_THERMAL.format(status=thermal)})
    if perf_ok:
        (d.bin / "dumpsys.d" / "cmd-ok").write_text("")
    return d


def test_bench_over_adb_records_state_pins_big_cores_and_sets_performance_mode(tmp_path, adb_key, native_runner,
                                                                                tiny_pte):
    if os.environ.get("EDGEPROBE_NATIVE_RUNNER"):
        pytest.skip("runner given as a single file (EDGEPROBE_NATIVE_RUNNER); deployment needs the installed bundle")
    with _phone(tmp_path, perf_ok=True) as d:
        r = edgeprobe.bench(tiny_pte, device=f"adb:127.0.0.1:{d.port}", iterations=3, warmup=1, affinity="big",
                            fixed_performance=True, max_thermal_status=1, min_battery_percent=20)
        assert r.ok, r.run.error
        st = r.device_state
        assert st.source.startswith("getprop/dumpsys")
        assert st.cpu_capacity == (512, 1024) and st.cpu_max_freq_khz == (1800000, 2850000)
        assert st.affinity_cores == (1,) and st.fixed_performance == "on"
        assert (st.battery_level_percent, st.thermal_status, st.thermal_status_after, st.charging) == (80, 0, 0, False)
        assert any("taskset 2 " in c for c in d.shell_log)
        # /proc read over the same shell, before and after the run (the test adbd runs a real sh here)
        assert st.cpu_load.available and st.cpu_load.cores and st.cpu_load.processes_seen > 1, st.cpu_load
        log = (d.bin / "dumpsys.d" / "cmd.log").read_text().splitlines()
        assert log == ["power set-fixed-performance-mode-enabled true", "power set-fixed-performance-mode-enabled false"]
        again = edgeprobe.BenchResult.from_json(r.to_json())
        assert again.device_state == st


def test_hygiene_refusals_over_adb(tmp_path, adb_key, monkeypatch):
    from edgeprobe.devices.adb import AdbTransport
    import edgeprobe.devices.hygiene as hygiene

    with _phone(tmp_path, thermal=3, level=15) as d:
        t = AdbTransport(f"127.0.0.1:{d.port}", auth_timeout_s=5)
        try:
            with pytest.raises(DeviceNotReadyError, match="battery at 15 %, below --min-battery 20"):
                with Session(t, MeasureConfig(min_battery_percent=20)):
                    pass
            slept = []
            with pytest.raises(DeviceNotReadyError, match=r"thermal status is 3 \(severe\).*after waiting 10 s"):
                with Session(t, MeasureConfig(max_thermal_status=1, thermal_wait_s=10), sleep=slept.append):
                    pass
            assert slept == [hygiene.POLL_S, hygiene.POLL_S]
            # cools down while we wait: status 3 -> 0 after the first poll
            thermal_file = d.bin / "dumpsys.d" / "thermalservice"
            def cool(seconds):
                slept.append(seconds)
                thermal_file.write_text(DUMPSYS_THERMAL.format(status=0))
            with Session(t, MeasureConfig(max_thermal_status=1, cooldown_s=2), sleep=cool) as s:
                pass
            assert s.state.thermal_status == 0 and s.state.cooldown_waited_s == 2
            # fixed-performance mode missing (older Android): recorded as unavailable, not faked
            with Session(t, MeasureConfig(fixed_performance=True)) as s:
                pass
            assert s.state.fixed_performance.startswith("unavailable: Unknown command")
        finally:
            t.close()


def test_tcp_device_has_no_shell_for_affinity():
    class Tcpish:
        kind, workdir, capabilities = "tcp", "/tmp", frozenset()

    with pytest.raises(UsageError, match="cannot pin cores"):
        Session(Tcpish(), MeasureConfig(affinity="big")).__enter__()
    with Session(Tcpish(), MeasureConfig()) as s:
        assert s.state.source.startswith("unavailable")
    assert not s.finish().cpu_load.available and "no shell" in s.finish().cpu_load.reason


# ---------------------------------------------------------------- what else used the CPU (finding 23)

# /proc/stat and /proc/<pid>/stat as Linux and Android print them (a comm with spaces and parens)
PROC_BEFORE = """0.52 0.61 0.70 2/311 4242
@@
cpu  1000 0 500 8000 100 0 0 0 0 0
cpu0 500 0 250 4000 50 0 0 0 0 0
cpu1 500 0 250 4000 50 0 0 0 0 0
@@
1 (init) S 0 1 1 0 -1 4194560 100 0 0 0 10 20 0 0 20 0 1 0 5 0 0
77 (surfaceflinger) S 1 77 77 0 -1 4194560 100 0 0 0 300 100 0 0 20 0 1 0 5 0 0
88 (a (weird) name) R 1 88 88 0 -1 4194560 100 0 0 0 50 50 0 0 20 0 1 0 5 0 0
garbage line
@@
"""
PROC_AFTER = """0.90 0.70 0.71 3/312 4300
@@
cpu  1150 0 550 8200 100 0 0 0 0 0
cpu0 575 0 275 4100 50 0 0 0 0 0
cpu1 575 0 275 4100 50 0 0 0 0 0
@@
1 (init) S 0 1 1 0 -1 4194560 100 0 0 0 10 20 0 0 20 0 1 0 5 0 0
77 (surfaceflinger) S 1 77 77 0 -1 4194560 100 0 0 0 350 150 0 0 20 0 1 0 5 0 0
88 (a (weird) name) R 1 88 88 0 -1 4194560 100 0 0 0 60 50 0 0 20 0 1 0 5 0 0
4299 (edgeprobe_runne) R 1 4299 4299 0 -1 4194560 100 0 0 0 90 10 0 0 20 0 1 0 5 0 0
@@
"""


def test_cpu_load_arithmetic_from_proc_texts():
    from edgeprobe.devices.hygiene import cpu_load, parse_cpu_sample

    a, b = parse_cpu_sample(PROC_BEFORE, 10.0), parse_cpu_sample(PROC_AFTER, 11.0)
    assert a.cpus == 2 and a.loadavg_1m == 0.52 and a.procs[88] == ("a (weird) name", 100)
    load = cpu_load(a, b)
    # 400 jiffies over 2 CPUs = 200 per core; busy 200 jiffies = 1.0 core; surfaceflinger 100 = 0.5 core
    assert load.available and load.cores == 2 and load.window_s == 1.0 and load.loadavg_1m_before == 0.52
    assert load.busy_cores == pytest.approx(1.0)
    assert [(p.name, p.pid) for p in load.others] == [("surfaceflinger", 77), ("a (weird) name", 88)]
    assert load.others[0].cores == pytest.approx(0.5) and load.others_cores == pytest.approx(0.55)
    assert all(p.pid != 4299 for p in load.others)  # the runner started in the window: not an "other"
    assert parse_cpu_sample("") is None and parse_cpu_sample("1.0\n@@\n@@\n@@") is None
    assert not cpu_load(a, None).available and "could not be read" in cpu_load(a, None).reason
    assert not cpu_load(b, a).available  # the counters did not advance


def test_a_busy_process_during_a_local_run_is_named(tmp_path):
    """A real spinning process beside a real window on this machine's /proc."""
    import subprocess
    import sys
    import time

    from edgeprobe.devices.hygiene import cpu_load, cpu_sample

    spin = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<30: pass"])
    t = LocalTransport()
    try:
        time.sleep(0.2)
        before = cpu_sample(t)
        time.sleep(1.0)
        load = cpu_load(before, cpu_sample(t), top=10_000)
    finally:
        spin.kill()
        spin.wait()
        t.close()
    mine = [p for p in load.others if p.pid == spin.pid]
    assert load.available and mine and mine[0].cores > 0.1, load
    assert load.busy_cores >= mine[0].cores - 0.05 and load.others_cores >= mine[0].cores
