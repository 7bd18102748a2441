"""Devices: how edgeprobe reaches a place to measure.

``base`` (the Transport protocol and its declared capabilities), one module per transport
(``local``, ``adb``, ``tcp``, ``mock``), ``registry`` (device ids to open Devices), ``deploy``
(runner bundle and artifact pushes), ``discovery`` (``edgeprobe devices``), ``probe`` and
``hygiene`` (device state before and after a run). Measuring lives one level up, in
``edgeprobe.session``; nothing here imports torch.
"""

from edgeprobe.devices.base import RunResult, Transport
from edgeprobe.devices.deploy import ABI_TO_MACHINE, deploy_native_runner, push_if_changed
from edgeprobe.devices.discovery import adb_addresses, list_devices, usb_adb_serials
from edgeprobe.devices.registry import FLAVORS, Device, check_device, default_runner, open_device

__all__ = ["ABI_TO_MACHINE", "FLAVORS", "Device", "RunResult", "Transport", "adb_addresses", "check_device",
           "default_runner", "deploy_native_runner", "list_devices", "open_device", "push_if_changed",
           "usb_adb_serials"]
