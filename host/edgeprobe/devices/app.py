"""The edgeprobe Android app over ADB: install its APK, start and stop its runner service, and read
where it listens (``edgeprobe app install|start|stop``).

The app (android_app/, ``RunnerService``) hosts core's runner server, the protocol of
``edgeprobe runner serve``. It is started with ``am start-foreground-service -n APPID/.RunnerService
--es token T --ei port P`` and writes ``files/server.json`` (host, port, name, token_file, runtimes,
delegates) in its private data directory, which the host reads with ``run-as APPID cat ...``: that
works on a debuggable build only (run-as refuses any other). Action ``dev.edgeprobe.app.STOP`` stops
it and removes the file. Once started, the app is a ``tcp:ADDRESS:PORT`` device like any runner
server; nothing here measures.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from edgeprobe.devices.adb import AdbTransport
from edgeprobe.errors import TransportError, UsageError

APP_IDS = {"xnnpack": "dev.edgeprobe.app", "vulkan": "dev.edgeprobe.app.vulkan", "qnn": "dev.edgeprobe.app.qnn"}
# the service's class is in package dev.edgeprobe.app whatever the flavour's application id (a suffix):
# ``-n dev.edgeprobe.app.vulkan/.RunnerService`` would name dev.edgeprobe.app.vulkan.RunnerService
SERVICE_CLASS = "dev.edgeprobe.app.RunnerService"
ACTION_STOP = "dev.edgeprobe.app.STOP"
STATUS_FILE = "files/server.json"
DEFAULT_PORT = 8765
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.25
APK_MAGIC = b"PK\x03\x04"  # an APK is a zip file; its first local file header
REMOTE_DIR = "/data/local/tmp"
_RC = "__EDGEPROBE_RC__"
_WLAN_INET = re.compile(r"\binet (\d{1,3}(?:\.\d{1,3}){3})/")


def component(app_id: str) -> str:
    """``am -n``'s component: the flavour's application id and the service's full class name."""
    return f"{app_id}/{SERVICE_CLASS}"


def app_id_of(flavor: str) -> str:
    try:
        return APP_IDS[flavor]
    except KeyError:
        raise UsageError(f"unknown app flavor {flavor!r}; choose one of: {', '.join(APP_IDS)}") from None


def check_apk(path: Path) -> Path:
    """``path`` if it is a file that starts as a zip does (an APK is one); else a UsageError saying so."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such APK file: {path} (build one in android_app/: ./gradlew :app:assembleXnnpackDebug)")
    with open(path, "rb") as f:
        head = f.read(len(APK_MAGIC))
    if head != APK_MAGIC:
        raise UsageError(f"{path} is not an APK (an APK is a zip file, which starts with PK\\x03\\x04; this one "
                         f"starts with {head!r}): give the .apk from app/build/outputs/apk/")
    return path


def _failure(output: str) -> str:
    """pm's reason in one line: its ``Failure [...]`` or ``Error: ...`` line, else its last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Failure", "Error")):
            return ln
    return lines[-1] if lines else "no output at all"


_PM_HINTS = {
    "INSTALL_FAILED_UPDATE_INCOMPATIBLE": "the installed app is signed with another key: uninstall it first "
                                          "(`adb uninstall APPID`)",
    "INSTALL_FAILED_VERSION_DOWNGRADE": "the installed app is newer: uninstall it first, or build a newer version",
    "INSTALL_FAILED_OLDER_SDK": "the phone's Android is older than the app's minSdk (26)",
    "INSTALL_FAILED_NO_MATCHING_ABIS": "the APK's native libraries are for another ABI (the app ships arm64-v8a)",
    "INSTALL_FAILED_INSUFFICIENT_STORAGE": "free space on the phone",
}


def install(t: AdbTransport, apk: Path, *, progress: Optional[Callable[[int, int], None]] = None) -> str:
    """Push ``apk`` to /data/local/tmp, ``pm install -r -g`` it, remove the pushed copy; pm's output.
    A pm that does not say ``Success`` is a TransportError with its Failure line."""
    apk = check_apk(apk)
    remote = f"{REMOTE_DIR}/edgeprobe-{uuid.uuid4().hex[:8]}.apk"
    size = apk.stat().st_size
    t.push(apk, remote, progress=progress)
    try:
        out = t.shell(f"pm install -r -g {shlex.quote(remote)} 2>&1", timeout_s=120 + size / 1e6)
    finally:
        t.shell(f"rm -f {shlex.quote(remote)}")
    if any(ln.strip() == "Success" for ln in out.splitlines()):
        return out
    why = _failure(out)
    hint = next((h for code, h in _PM_HINTS.items() if code in why), "fix what pm says, then install again")
    named = re.search(r"\bpackage ([A-Za-z][\w.]*)", why)  # pm names the installed package, if any
    hint = hint.replace("APPID", named.group(1) if named else APP_IDS["xnnpack"])
    raise TransportError(f"{t.target}: pm install of {apk.name} failed: {why}; {hint}")


def _sh(t: AdbTransport, command: str, timeout_s: float = 30.0) -> tuple[int, str]:
    """``command``'s exit code and its output (stdout and stderr together)."""
    out = t.shell(f"{command} 2>&1; echo {_RC}$?", timeout_s=timeout_s)
    body, _, code = out.rpartition(_RC)
    try:
        return int(code.strip()), body.strip()
    except ValueError:
        return -1, out.strip()


def _not_debuggable(t: AdbTransport, app_id: str, text: str) -> TransportError:
    first = text.splitlines()[0] if text else f"run-as {app_id} refused"
    return TransportError(f"{t.target}: {first}; edgeprobe reads the app's {STATUS_FILE} with run-as, which works "
                          "on a debuggable build only: install the debug APK "
                          "(./gradlew :app:assemble<Flavor>Debug)")


def read_status(t: AdbTransport, app_id: str) -> Optional[dict[str, Any]]:
    """The app's server.json, or None while there is none (not started yet, or stopped). A package
    that is not installed or not debuggable is a TransportError."""
    rc, out = _sh(t, f"run-as {shlex.quote(app_id)} cat {STATUS_FILE}")
    if rc == 0:
        try:
            data = json.loads(out)
        except ValueError:
            return None  # being written (the app writes it whole, but a read may still race it)
        return data if isinstance(data, dict) else None
    if "unknown package" in out:
        raise TransportError(f"{t.target}: {app_id} is not installed: `edgeprobe app install APK --device {t.target}`")
    if "not debuggable" in out:
        raise _not_debuggable(t, app_id, out)
    if "No such file" in out:  # not written yet, or removed by STOP
        return None
    raise TransportError(f"{t.target}: run-as {app_id} cat {STATUS_FILE} failed (exit {rc}): "
                         f"{(out.splitlines() or ['no output'])[0]}")


def _installed(t: AdbTransport, app_id: str) -> bool:
    """``pm path`` prints ``package:PATH`` for an installed package and nothing for another."""
    _rc, out = _sh(t, f"pm path {shlex.quote(app_id)}")
    return any(ln.startswith("package:") for ln in out.splitlines())


def _am(t: AdbTransport, args: str, what: str) -> str:
    """``am start-foreground-service`` + ``args``; am's ``Error: ...`` line (it exits 255) is a TransportError."""
    rc, out = _sh(t, f"am start-foreground-service {args}")
    err = next((ln.strip() for ln in out.splitlines() if ln.strip().startswith("Error")), None)
    if err or rc != 0:
        raise TransportError(f"{t.target}: am could not {what}: {err or _failure(out)} (exit {rc}); is the app "
                             "installed (`edgeprobe app install`)? `adb logcat -s edgeprobe ActivityManager` says more")
    return out


@dataclass(frozen=True)
class AppServer:
    """Where a started app listens, as its server.json says, and the address the host can use."""

    app_id: str
    port: int
    name: str
    listen: str  # server.json's host: what the server bound (0.0.0.0: every interface)
    token_file: Optional[str]
    runtimes: tuple[str, ...]
    delegates: tuple[str, ...]
    address: Optional[str]  # how this host reaches the phone; None: not known (address_reason says why)
    address_reason: Optional[str] = None

    @property
    def device_id(self) -> Optional[str]:
        return f"tcp:{self.address}:{self.port}" if self.address else None

    def to_dict(self) -> dict[str, Any]:
        return {"app_id": self.app_id, "host": self.listen, "port": self.port, "name": self.name,
                "token_file": self.token_file, "runtimes": list(self.runtimes), "delegates": list(self.delegates),
                "address": self.address, "address_reason": self.address_reason, "device": self.device_id}


def _words(value: Any) -> tuple[str, ...]:
    """server.json's runtimes / delegates: core writes a comma-separated string (or null); a list is read too."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    return tuple(str(v).strip() for v in items if str(v).strip())


def _address(t: AdbTransport, listen: str) -> tuple[Optional[str], Optional[str]]:
    """The phone's address for this host: the bound one, else ADB over TCP's host, else wlan0's IPv4."""
    if listen and listen not in ("0.0.0.0", "::", "[::]"):
        return listen, None
    host, _, port = t.target[len("adb:"):].rpartition(":")
    if host and port.isdigit():
        return host, None
    _rc, out = _sh(t, "ip -o -4 addr show wlan0")
    m = _WLAN_INET.search(out)
    if m:
        return m.group(1), None
    return None, ("the phone has no IPv4 address on wlan0 (ADB over USB): join it to this host's network, then "
                  "use tcp:ITS_ADDRESS:PORT")


def _status_to_server(t: AdbTransport, app_id: str, data: dict[str, Any]) -> AppServer:
    port = data.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise TransportError(f"{t.target}: {app_id}'s {STATUS_FILE} has no port: {json.dumps(data)[:200]}")
    listen = str(data.get("host") or "")
    address, why = _address(t, listen)
    return AppServer(app_id, port, str(data.get("name") or ""), listen,
                     str(data["token_file"]) if data.get("token_file") else None,
                     _words(data.get("runtimes")), _words(data.get("delegates")), address, why)


def start(t: AdbTransport, *, flavor: str = "xnnpack", port: int = DEFAULT_PORT, token: Optional[str] = None,
          timeout_s: float = START_TIMEOUT_S, poll_s: float = POLL_S) -> tuple[AppServer, Optional[str]]:
    """Start the app's runner service and wait for its server.json; returns where it listens and the
    token when one was generated here (None when the caller gave it)."""
    app_id = app_id_of(flavor)
    if not 0 <= port < 65536:
        raise UsageError(f"--port {port} is not a TCP port (0..65535; 0: the app picks one)")
    if token is not None and (not token or any(c.isspace() for c in token)):
        raise UsageError("--token must be a non-empty word without spaces")
    if not _installed(t, app_id):
        raise TransportError(f"{t.target}: {app_id} is not installed: `edgeprobe app install APK --device {t.target}` "
                             f"(the {flavor} flavour's APK)")
    running = read_status(t, app_id)  # also: not debuggable fails here, before anything is started
    if running is not None:
        raise TransportError(f"{t.target}: {app_id} is already serving on port {running.get('port')}: "
                             f"`edgeprobe app stop --device {t.target}` first (its token stays in its files/token)")
    generated = None if token is not None else secrets.token_hex(16)
    _am(t, f"-n {shlex.quote(component(app_id))} --es token {shlex.quote(token or generated or '')} "
           f"--ei port {int(port)}", f"start {component(app_id)}")
    deadline = time.monotonic() + timeout_s
    while True:
        data = read_status(t, app_id)
        if data is not None:
            return _status_to_server(t, app_id, data), generated
        if time.monotonic() >= deadline:
            raise TransportError(f"{t.target}: {app_id} did not write {STATUS_FILE} within {timeout_s:g} s of "
                                 "`am start-foreground-service`: its server did not start (port in use?); "
                                 "`adb logcat -s edgeprobe` says why")
        time.sleep(poll_s)


def stop(t: AdbTransport, *, flavor: str = "xnnpack", timeout_s: float = STOP_TIMEOUT_S,
         poll_s: float = POLL_S) -> bool:
    """Send the STOP action; True once the app's server.json is gone (the server stopped), False if it
    is still there after ``timeout_s``."""
    app_id = app_id_of(flavor)
    _am(t, f"-n {shlex.quote(component(app_id))} -a {ACTION_STOP}", f"stop {component(app_id)}")
    deadline = time.monotonic() + timeout_s
    while read_status(t, app_id) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True
