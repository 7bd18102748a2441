"""A device's health now, for ``edgeprobe farm devices``: open it, read what it says about itself
(model, ABI, OS) and its battery and thermal status (Android, through the device probe), close it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgeprobe.farm.inventory import DeviceEntry, token_for


@dataclass(frozen=True)
class Probe:
    reachable: bool
    description: str  # e.g. "Linux x86_64 host", "edgeprobe test-adbd · arm64-v8a · SDK 34"
    battery_percent: Optional[float]  # None: not reported (not a phone, or not readable)
    charging: Optional[bool]
    thermal: Optional[str]  # the thermal status name, None when not reported
    error: Optional[str] = None  # why it is not reachable


def probe(entry: DeviceEntry) -> Probe:
    """Open ``entry`` with the Python runner (nothing is deployed), describe it and close it."""
    from edgeprobe.devices.hygiene import snapshot
    from edgeprobe.devices.probe import thermal_name
    from edgeprobe.devices.registry import open_device
    from edgeprobe.farm.faults import one_line

    try:
        with open_device(entry.id, runner="python", token=token_for(entry)) as dev:
            i = dev.transport.info()
            parts = [f"{i.get('manufacturer', '')} {i.get('model', '')}".strip(), i.get("abi") or i.get("machine", ""),
                     f"SDK {i['sdk']}" if i.get("sdk") else i.get("os", "")]
            try:
                snap = snapshot(dev.transport)
            except Exception:  # noqa: BLE001 - a device without the probe's tools still answers
                snap = None
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is its health
        return Probe(False, "", None, None, None, one_line(exc))
    b = snap.battery if snap is not None else None
    thermal = thermal_name(snap.thermal_status) if snap is not None and snap.thermal_status is not None else None
    return Probe(True, " · ".join(p for p in parts if p), b.level_percent if b else None, b.charging if b else None,
                 thermal)
