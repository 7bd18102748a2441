"""Discovery: every device edgeprobe can reach now (local, ADB over TCP and USB, zeroconf runners),
each with the runner it would use and its health."""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

from edgeprobe.devices.registry import _zeroconf_interfaces, open_device
from edgeprobe.errors import TransportError
from edgeprobe.results import DeviceInfo


def adb_addresses() -> list[str]:
    """ADB-over-TCP addresses to list: ``$EDGEPROBE_ADB_ADDRESSES`` (comma-separated HOST:PORT)."""
    return [a.strip() for a in os.environ.get("EDGEPROBE_ADB_ADDRESSES", "").split(",") if a.strip()]


def usb_adb_serials() -> tuple[list[str], Optional[str]]:
    """Serials of USB devices exposing an ADB interface (class 0xff, subclass 0x42, protocol 1),
    via libusb1 (``pip install adb-shell[usb]``); ([], why) when the scan cannot run."""
    try:
        import usb1  # type: ignore[import-not-found]
    except ImportError:
        return [], "USB scan skipped: needs `pip install adb-shell[usb]` (libusb1)"
    serials: list[str] = []
    try:
        with usb1.USBContext() as ctx:
            for dev in ctx.getDeviceIterator(skip_on_error=True):
                adb_iface = any((s.getClass(), s.getSubClass(), s.getProtocol()) == (0xFF, 0x42, 0x01)
                                for cfg in dev for iface in cfg for s in iface)
                if adb_iface:
                    try:
                        serials.append(dev.getSerialNumber() or f"{dev.getBusNumber()}-{dev.getDeviceAddress()}")
                    except usb1.USBError as exc:  # no permission to read the descriptor (udev rules)
                        serials.append(f"{dev.getBusNumber()}-{dev.getDeviceAddress()} (serial unreadable: {exc})")
    except Exception as exc:  # noqa: BLE001 - libusb missing or no USB subsystem
        return serials, f"USB scan failed: {exc}"
    return serials, None


def _adb_row(address: str, connect_timeout_s: float) -> DeviceInfo:
    from edgeprobe.devices.adb import AdbTransport
    from edgeprobe.devices.hygiene import snapshot
    from edgeprobe.devices.probe import thermal_name

    dev_id = f"adb:{address}"
    try:
        t = AdbTransport(address, auth_timeout_s=connect_timeout_s, transport_timeout_s=connect_timeout_s)
    except TransportError as exc:
        return DeviceInfo(dev_id, "adb", "", "", f"unreachable: {exc}")
    try:
        info = t.info()
        snap = snapshot(t)
        parts = []
        if snap is not None and snap.battery is not None and snap.battery.level_percent is not None:
            b = snap.battery
            parts.append(f"battery {b.level_percent} %" + (" charging" if b.charging else ""))
        if snap is not None and snap.thermal_status is not None:
            parts.append(f"thermal {thermal_name(snap.thermal_status)}")
        desc = " · ".join(x for x in (f"{info.get('manufacturer', '')} {info.get('model', '')}".strip(),
                                      info.get("abi", ""), f"SDK {info['sdk']}" if info.get("sdk") else "") if x)
        return DeviceInfo(dev_id, "adb", "native (pushed on first use)", desc,
                          "ok" + (f" ({', '.join(parts)})" if parts else ""))
    except TransportError as exc:
        return DeviceInfo(dev_id, "adb", "", "", f"connected, then failed: {exc}")
    finally:
        t.close()


def _tcp_health(host: str, port: int, token: Optional[str], timeout_s: float) -> str:
    from edgeprobe.devices.tcp import TcpTransport, probe

    if not token:
        return probe(host, int(port), timeout_s)
    try:  # the v2 handshake: the token itself is never sent, and the runner must prove it holds it
        TcpTransport(host, int(port), token, timeout_s=timeout_s).close()
    except TransportError as exc:
        return f"refused: {exc}"
    return "ok (token accepted; the runner proved it holds it)"


def list_devices(adb: Optional[Sequence[str]] = None, *, usb: bool = True, timeout_s: float = 3.0,
                 token: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> list[DeviceInfo]:
    """Every device edgeprobe can reach now, with the runner it would use and its health: local,
    ADB over TCP (``adb`` plus ``$EDGEPROBE_ADB_ADDRESSES``), ADB over USB (libusb scan) and
    runners advertised over zeroconf."""
    from edgeprobe.errors import RunnerNotBuiltError
    from edgeprobe.native import find_native_runner

    try:
        find_native_runner()
        flavor, health = "native", "ok"
    except RunnerNotBuiltError as exc:
        flavor, health = "python", f"ok; native runner not built: {exc}"
    with open_device("local", runner="python") as dev:
        info = dev.info()
    out = [DeviceInfo(info.id, info.transport, flavor, info.description, health)]
    for address in dict.fromkeys([*(adb or ()), *adb_addresses()]):
        if log:
            log(f"connecting to adb:{address}")
        out.append(_adb_row(address, timeout_s))
    if usb:
        serials, why = usb_adb_serials()
        if why and log:
            log(why)
        for serial in serials:
            out.append(_adb_row(serial, timeout_s) if "(" not in serial else
                       DeviceInfo(f"adb:{serial.split()[0]}", "adb", "", "", serial))
    from edgeprobe.devices.tcp import discover

    token = token or os.environ.get("EDGEPROBE_TOKEN")
    for f in discover(interfaces=_zeroconf_interfaces()):
        out.append(DeviceInfo(f["name"], "tcp", f["runtimes"],
                              f"tcp:{f['host']}:{f['port']} · {f['abi']} · edgeprobe_runner {f['version']} (zeroconf)",
                              _tcp_health(f["host"], int(f["port"]), token, timeout_s)))
    return out
