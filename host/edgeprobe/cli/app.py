"""`edgeprobe app install|start|stop --device adb:...`: the edgeprobe Android app over ADB
(``edgeprobe.devices.app``); once started it is benched as ``tcp:ADDRESS:PORT``."""

from __future__ import annotations

import argparse
import json
import os

from rich.markup import escape

from edgeprobe.errors import UsageError

FLAVORS = ("xnnpack", "vulkan", "qnn")  # edgeprobe.devices.app.APP_IDS, spelled out: parsing imports nothing


def add_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("app", help="install, start and stop the edgeprobe Android app over ADB")
    asub = a.add_subparsers(dest="app_command", required=True)
    device_help = "adb:SERIAL | adb:HOST:PORT"
    i = asub.add_parser("install", help="push an APK and `pm install -r -g` it")
    i.add_argument("apk", help="the app's .apk (android_app/app/build/outputs/apk/...)")
    i.add_argument("--device", required=True, help=device_help)
    s = asub.add_parser("start", help="start the app's runner service; prints its tcp device id")
    s.add_argument("--device", required=True, help=device_help)
    s.add_argument("--port", type=int, default=8765, help="the port the app listens on (default 8765)")
    s.add_argument("--token", help="the runner's token (default: $EDGEPROBE_TOKEN, else one generated and "
                                   "printed once)")
    s.add_argument("--flavor", default="xnnpack", choices=list(FLAVORS),
                   help="which app: xnnpack (dev.edgeprobe.app), vulkan (.vulkan) or qnn (.qnn)")
    s.add_argument("--timeout-s", type=float, default=20.0, help="how long to wait for the server to start")
    s.add_argument("--json", action="store_true", help="print server.json's fields and the tcp device id as JSON")
    t = asub.add_parser("stop", help="stop the app's runner service")
    t.add_argument("--device", required=True, help=device_help)
    t.add_argument("--flavor", default="xnnpack", choices=list(FLAVORS))


def _open(device: str):
    if not device.startswith("adb:") or len(device) <= len("adb:"):
        raise UsageError(f"edgeprobe app works over ADB: --device adb:SERIAL or adb:HOST:PORT, not {device!r} "
                         "(once started, the app is the tcp:ADDRESS:PORT that `edgeprobe app start` prints)")
    from edgeprobe.devices.adb import AdbTransport

    return AdbTransport(device[len("adb:"):])


def run(args: argparse.Namespace, console, err_console) -> int:
    from edgeprobe.devices import app

    if args.app_command == "install":
        apk = app.check_apk(args.apk)  # before connecting: a wrong path fails at once
        t = _open(args.device)
        try:
            err_console.print(f"[dim]· pushing {escape(str(apk))} to {escape(args.device)}[/dim]")
            app.install(t, apk)
        finally:
            t.close()
        console.print(f"installed {escape(apk.name)} on {escape(args.device)}")
        return 0
    if args.app_command == "start":
        token = args.token or os.environ.get("EDGEPROBE_TOKEN") or None
        t = _open(args.device)
        try:
            server, generated = app.start(t, flavor=args.flavor, port=args.port, token=token, timeout_s=args.timeout_s)
        finally:
            t.close()
        if args.json:
            out = server.to_dict()
            if generated:
                out["token"] = generated  # printed once; a token the user gave is never printed
            print(json.dumps(out), flush=True)  # plain: a rich console would wrap a long line
            return 0
        where = server.device_id or f"tcp:?:{server.port} ({server.address_reason})"
        console.print(f"{escape(server.app_id)} serving as {escape(server.name)} on port {server.port}")
        console.print(f"  device:    {escape(where)}")
        console.print(f"  runtimes:  {escape(', '.join(server.runtimes) or 'none')}")
        console.print(f"  delegates: {escape(', '.join(server.delegates) or 'none')}")
        if generated:
            console.print(f"  token:     {generated}  (generated; shown once: export EDGEPROBE_TOKEN={generated})")
        else:
            console.print(f"  token:     the one given (--token or $EDGEPROBE_TOKEN); the app keeps it in "
                          f"{escape(server.token_file or 'files/token')}")
        runner = " --runner app" if "app" in server.runtimes else ""
        console.print(f"  bench:     edgeprobe bench MODEL --device {escape(where)}{runner}")
        return 0
    if args.app_command == "stop":
        t = _open(args.device)
        try:
            stopped = app.stop(t, flavor=args.flavor)
        finally:
            t.close()
        if stopped:
            console.print(f"{escape(app.app_id_of(args.flavor))} stopped on {escape(args.device)}")
            return 0
        err_console.print(f"[yellow]stop sent, but {escape(app.app_id_of(args.flavor))}'s {app.STATUS_FILE} is still "
                          f"there after {app.STOP_TIMEOUT_S:g} s[/yellow]: see `adb logcat -s edgeprobe`")
        return 1
    raise AssertionError(f"unhandled app command {args.app_command}")
