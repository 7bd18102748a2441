"""The host side of the edgeprobe Android app (issue 16, item 4): ``edgeprobe app install|start|stop``
over the ADB transport, the ``app`` runner flavour, ``runner.delegate`` in records, and the rule that
``--backend vulkan`` lowers only for a device that lists the Vulkan delegate.

No phone and no Android package manager exist here. The ADB side runs against tests/adbd.py (the
real ADB protocol; its shell commands run with /bin/sh on this machine), and small ``pm``, ``am`` and
``run-as`` shell scripts put in that adbd's PATH stand in for Android's tools. They answer these
calls with the texts of AOSP's own code (cited at each script): they are stand-ins, and what they
prove is that the host sends the right commands and reads the real tools' answers as it should.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from pathlib import Path

import pytest

from edgeprobe.devices import app
from edgeprobe.devices.adb import AdbTransport
from edgeprobe.errors import TransportError, UnsupportedCombinationError, UsageError

from adbd import TestAdbd  # tests/ is on sys.path (rootdir conftest)

APP_ID = "dev.edgeprobe.app"

# `pm`, after frameworks/base services/core/java/com/android/server/pm/PackageManagerShellCommand.java:
# doCommitSession prints "Success" or "Failure [" + EXTRA_STATUS_MESSAGE + "]"; setParamsSize prints
# "Error: Can't open file: PATH" for a file it cannot open; runPath prints "package:" + sourceDir for an
# installed package and nothing (exit 1) for another. A real pm parses the APK's manifest; this one
# finds package="..." in the (stored, uncompressed) AndroidManifest.xml of the test APK.
PM = r'''#!/bin/sh
F="{fake}"; R="{root}"
echo "$*" >> "$F/pm.log"
case "$1" in
install)
  shift; while [ $# -gt 1 ]; do case "$1" in -r|-g) shift;; *) break;; esac; done
  apk="$1"
  if [ ! -f "$apk" ]; then echo "Error: Can't open file: $apk" >&2; exit 1; fi
  pkg=$(grep -ao 'package="[^"]*"' "$apk" | head -n1 | sed 's/package="\(.*\)"/\1/')
  if [ -z "$pkg" ]; then
    echo "Failure [INSTALL_PARSE_FAILED_NOT_APK: Failed to parse $apk: Failed to load asset path $apk]"; exit 1
  fi
  if [ -f "$F/fail-install" ]; then echo "Failure [$(cat "$F/fail-install")]"; exit 1; fi
  mkdir -p "$R/data/app/$pkg" "$R/data/data/$pkg/files"
  cp "$apk" "$R/data/app/$pkg/base.apk"
  echo "Success";;
path)
  if [ -f "$R/data/app/$2/base.apk" ]; then echo "package:/data/app/$2/base.apk"; exit 0; fi
  exit 1;;
*) echo "Unknown command: $1" >&2; exit 1;;
esac
'''

# `am start-foreground-service`, after ActivityManagerShellCommand.runStartService: "Starting service:
# " + intent on stdout, "Error: Not found; no service started." on stderr and exit 255 (return -1) when
# no service resolves. The "service" is the app's RunnerService as the host sees it: STOP removes
# files/server.json; a start writes it (and files/token) a moment later, in the background, as the
# app's service does once its server listens; with $F/no-start it never does (the server failed).
AM = r'''#!/bin/sh
F="{fake}"; R="{root}"
echo "$*" >> "$F/am.log"
[ "$1" = start-foreground-service ] || {{ echo "Error: unknown command '$1'" >&2; exit 255; }}
shift; comp=""; action=""; token=""; port=""
while [ $# -gt 0 ]; do
  case "$1" in
  -n) comp="$2"; shift 2;;
  -a) action="$2"; shift 2;;
  --es) [ "$2" = token ] && token="$3"; shift 3;;
  --ei) [ "$2" = port ] && port="$3"; shift 3;;
  *) shift;;
  esac
done
pkg="${{comp%%/*}}"
echo "Starting service: Intent {{ ${{action:+act=$action }}cmp=$comp (has extras) }}"
if [ ! -f "$R/data/app/$pkg/base.apk" ] || [ "${{comp#*/}}" != dev.edgeprobe.app.RunnerService ]; then
  echo "Error: Not found; no service started." >&2; exit 255
fi
files="$R/data/data/$pkg/files"
if [ "$action" = dev.edgeprobe.app.STOP ]; then rm -f "$files/server.json"; exit 0; fi
[ -f "$F/no-start" ] && exit 0
( sleep 0.6
  printf '%s\n' "$token" > "$files/token"
  printf '{{"host":"0.0.0.0","port":%s,"name":"edgeprobe-test-phone",' "${{port:-8765}}" > "$files/server.json.tmp"
  printf '"token_file":"/data/user/0/%s/files/token",' "$pkg" >> "$files/server.json.tmp"
  printf '"runtimes":"native,app","delegates":"xnnpack"}}\n' >> "$files/server.json.tmp"
  mv "$files/server.json.tmp" "$files/server.json" ) >/dev/null 2>&1 &
exit 0
'''

# `run-as`, after system/core/run-as/run-as.cpp: error(1, 0, "unknown package: %s") and
# error(1, 0, "package not debuggable: %s") print "run-as: ..." and exit 1; otherwise it runs the
# command in the app's data directory as the app.
RUN_AS = r'''#!/bin/sh
F="{fake}"; R="{root}"
pkg="$1"; shift
if [ ! -d "$R/data/data/$pkg" ]; then echo "run-as: unknown package: $pkg" >&2; exit 1; fi
if [ -f "$F/not-debuggable" ]; then echo "run-as: package not debuggable: $pkg" >&2; exit 1; fi
cd "$R/data/data/$pkg" && exec "$@"
'''


@pytest.fixture()
def adb_key(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_ADB_KEY", str(tmp_path / "keys" / "adbkey"))


@pytest.fixture()
def phone(tmp_path, adb_key):
    """The test adbd with the stand-in pm, am and run-as; yields (adbd, fake-tools dir)."""
    root = tmp_path / "dev"
    with TestAdbd(root) as d:
        fake = root / ".fake-android"
        fake.mkdir()
        for name, text in (("pm", PM), ("am", AM), ("run-as", RUN_AS)):
            (d.bin / name).write_text(text.format(fake=fake, root=d.root))
            (d.bin / name).chmod(0o755)
        yield d, fake


def _apk(path: Path, package: str = APP_ID) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("AndroidManifest.xml", f'<manifest package="{package}"/>')
        z.writestr("classes.dex", b"dex\n035\0" + bytes(range(256)) * 64)
    return path


def _flat(text: str) -> str:
    """Console text with rich's line wrapping undone."""
    return " ".join(text.split())


def _pushed_leftovers(d: TestAdbd) -> list[str]:
    return sorted(p.name for p in (d.root / "data/local/tmp").glob("edgeprobe-*.apk"))


def _connect(d: TestAdbd) -> AdbTransport:
    return AdbTransport(f"127.0.0.1:{d.port}", auth_timeout_s=5)


def _installed(d: TestAdbd, package: str = APP_ID) -> None:
    (d.root / "data/app" / package).mkdir(parents=True)
    (d.root / "data/app" / package / "base.apk").write_bytes(b"PK\x03\x04")
    (d.root / "data/data" / package / "files").mkdir(parents=True)


# ---------------------------------------------------------------------------------------- install


def test_install_pushes_the_apk_runs_pm_install_and_removes_the_pushed_copy(phone, tmp_path):
    d, fake = phone
    apk = _apk(tmp_path / "app-xnnpack-debug.apk")
    t = _connect(d)
    try:
        out = app.install(t, apk)
    finally:
        t.close()
    assert "Success" in out
    (call,) = (fake / "pm.log").read_text().splitlines()
    words = call.split()
    assert words[:3] == ["install", "-r", "-g"] and len(words) == 4
    assert words[3].startswith(str(d.root / "data/local/tmp/edgeprobe-")) and words[3].endswith(".apk")
    installed = d.root / "data/app" / APP_ID / "base.apk"  # what pm got is the file, byte for byte
    assert hashlib.sha256(installed.read_bytes()).digest() == hashlib.sha256(apk.read_bytes()).digest()
    assert _pushed_leftovers(d) == []


def test_a_pm_failure_is_its_failure_line_and_the_pushed_copy_is_removed_all_the_same(phone, tmp_path):
    d, fake = phone
    (fake / "fail-install").write_text("INSTALL_FAILED_UPDATE_INCOMPATIBLE: Existing package dev.edgeprobe.app "
                                       "signatures do not match newer version; ignoring!")
    t = _connect(d)
    try:
        with pytest.raises(TransportError, match=r"pm install of a\.apk failed: Failure \[INSTALL_FAILED_UPDATE_"
                                                 r"INCOMPATIBLE: Existing package .*\]; the installed app is signed with another "
                                                 r"key: uninstall it first \(`adb uninstall dev\.edgeprobe\.app`\)"):
            app.install(t, _apk(tmp_path / "a.apk"))
        with pytest.raises(TransportError, match=r"failed: Failure \[INSTALL_PARSE_FAILED_NOT_APK"):
            app.install(t, _apk(tmp_path / "b.apk", package=""))  # a zip without a manifest pm can read
    finally:
        t.close()
    assert _pushed_leftovers(d) == []
    assert not (d.root / "data/app" / APP_ID).exists()


def test_install_refuses_a_missing_file_and_a_non_apk_before_connecting(tmp_path, capsys):
    from edgeprobe import cli

    text = tmp_path / "notes.apk"
    text.write_text("not a zip")
    # port 9 on loopback: nobody listens, so reaching the device would be a different error
    assert cli.main(["app", "install", str(text), "--device", "adb:127.0.0.1:9"]) == cli.EXIT_USAGE
    assert "is not an APK" in _flat(capsys.readouterr().err)
    assert cli.main(["app", "install", str(tmp_path / "missing.apk"), "--device", "adb:127.0.0.1:9"]) == cli.EXIT_USAGE
    assert "no such APK file" in _flat(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------- start / stop


def test_start_passes_token_and_port_polls_server_json_and_prints_the_tcp_device(phone, capsys, monkeypatch):
    from edgeprobe import cli

    d, fake = phone
    monkeypatch.delenv("EDGEPROBE_TOKEN", raising=False)
    _installed(d)
    t0 = time.monotonic()
    rc = cli.main(["app", "start", "--device", f"adb:127.0.0.1:{d.port}", "--port", "8770", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    got = json.loads(out)
    assert got["device"] == "tcp:127.0.0.1:8770" and got["port"] == 8770 and got["host"] == "0.0.0.0"
    assert got["runtimes"] == ["native", "app"] and got["delegates"] == ["xnnpack"]
    assert got["token_file"] == f"/data/user/0/{APP_ID}/files/token" and got["name"] == "edgeprobe-test-phone"
    token = got["token"]  # generated here, printed once
    assert len(token) == 32
    (call,) = (fake / "am.log").read_text().splitlines()
    assert call == (f"start-foreground-service -n {APP_ID}/dev.edgeprobe.app.RunnerService "
                    f"--es token {token} --ei port 8770")
    # the service writes server.json 0.6 s after am returned: the host read it more than once
    reads = [c for c in d.shell_log if f"run-as {APP_ID} cat files/server.json" in c]
    assert len(reads) >= 3 and time.monotonic() - t0 >= 0.6
    assert (d.root / "data/data" / APP_ID / "files/token").read_text().strip() == token


def test_start_never_prints_a_token_the_user_gave(phone, capsys, monkeypatch):
    from edgeprobe import cli

    d, fake = phone
    _installed(d)
    monkeypatch.delenv("EDGEPROBE_TOKEN", raising=False)
    rc = cli.main(["app", "start", "--device", f"adb:127.0.0.1:{d.port}", "--token", "s3cret-given-token"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "s3cret-given-token" not in out + err
    out = _flat(out)
    assert "tcp:127.0.0.1:8765" in out and "--runner app" in out and f"/data/user/0/{APP_ID}/files/token" in out
    assert "--es token s3cret-given-token" in (fake / "am.log").read_text()
    rc = cli.main(["app", "start", "--device", f"adb:127.0.0.1:{d.port}", "--token", "other", "--json"])
    out, err = capsys.readouterr()  # already serving: refused, nothing started over it
    assert rc == cli.EXIT_USAGE and "already serving on port 8765" in _flat(err) and "app stop" in _flat(err)
    assert len((fake / "am.log").read_text().splitlines()) == 1


def test_start_times_out_when_the_service_never_writes_server_json(phone):
    d, fake = phone
    _installed(d)
    (fake / "no-start").write_text("")
    t = _connect(d)
    try:
        t0 = time.monotonic()
        with pytest.raises(TransportError, match=r"did not write files/server\.json within 1\.5 s"):
            app.start(t, timeout_s=1.5, poll_s=0.1)
        assert 1.5 <= time.monotonic() - t0 < 10
    finally:
        t.close()
    assert len([c for c in d.shell_log if "cat files/server.json" in c]) >= 5  # polled, not read once


def test_start_says_when_the_app_is_not_installed_or_not_debuggable(phone):
    d, fake = phone
    t = _connect(d)
    try:
        with pytest.raises(TransportError, match=r"dev\.edgeprobe\.app\.vulkan is not installed: `edgeprobe app "
                                                 r"install APK --device adb:127\.0\.0\.1:\d+`"):
            app.start(t, flavor="vulkan")
        assert not (fake / "am.log").exists()  # nothing was started
        _installed(d)
        (fake / "not-debuggable").write_text("")
        with pytest.raises(TransportError, match=r"package not debuggable: dev\.edgeprobe\.app; .*debuggable build"):
            app.start(t)
        assert not (fake / "am.log").exists()
    finally:
        t.close()


def test_am_error_line_is_reported(phone):
    d, _fake = phone  # the qnn flavour is not installed: am resolves no service
    t = _connect(d)
    try:
        with pytest.raises(TransportError, match=r"am could not stop .*Error: Not found; no service started\."):
            app.stop(t, flavor="qnn")
    finally:
        t.close()


def test_stop_sends_the_stop_action_and_waits_for_server_json_to_go(phone, capsys):
    from edgeprobe import cli

    d, fake = phone
    _installed(d)
    t = _connect(d)
    try:
        server, token = app.start(t, port=8765, token="tok", poll_s=0.1)
        assert token is None and server.device_id == "tcp:127.0.0.1:8765"
    finally:
        t.close()
    status = d.root / "data/data" / APP_ID / "files/server.json"
    assert status.is_file()
    assert cli.main(["app", "stop", "--device", f"adb:127.0.0.1:{d.port}"]) == 0
    assert "stopped" in capsys.readouterr().out
    assert (fake / "am.log").read_text().splitlines()[-1] == (
        f"start-foreground-service -n {APP_ID}/dev.edgeprobe.app.RunnerService -a dev.edgeprobe.app.STOP")
    assert not status.exists()


def test_app_commands_want_an_adb_device(capsys):
    from edgeprobe import cli

    assert cli.main(["app", "stop", "--device", "tcp:127.0.0.1:8765"]) == cli.EXIT_USAGE
    assert "--device adb:SERIAL or adb:HOST:PORT" in _flat(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------- runner app


def test_request_from_argv_says_app_and_the_python_server_still_refuses_it():
    from edgeprobe_runner.server import Refused, build_argv, request_from_argv

    argv = ["@app", "--model", "jobs/a/model.pte", "--vectors", "jobs/a/vectors.epv", "--iterations", "5",
            "--min-seconds", "0.5", "--output", "jobs/a/record.json"]
    req = request_from_argv(argv, 30)
    assert req == {"op": "run", "runner": "app", "timeout_s": 30.0,
                   "args": {"model": "jobs/a/model.pte", "vectors": "jobs/a/vectors.epv", "iterations": 5,
                            "min_seconds": 0.5, "output": "jobs/a/record.json"}}
    # the args are the native runner's: the server builds the same flags back from them
    flags = build_argv("native", req["args"], lambda p: p)
    assert flags == ["--model", "jobs/a/model.pte", "--vectors", "jobs/a/vectors.epv", "--iterations", "5",
                     "--min-seconds", "0.5", "--output", "jobs/a/record.json"]
    with pytest.raises(Refused, match=r"run needs runner native or python, not 'app'"):
        build_argv("app", req["args"], lambda p: p)
    with pytest.raises(ValueError, match=r"must be @native, @python or @app, not '@shell'"):
        request_from_argv(["@shell", "--model", "m.pte"], 30)


@pytest.mark.real_peer("jvm")
def test_runner_app_is_refused_before_anything_is_sent_naming_the_runtimes(tmp_path, monkeypatch, capsys):
    """Against the JVM build of core (which has no in-process runner: runtimes native only)."""
    from jvmkit import JvmCoreServer

    from edgeprobe import cli
    from edgeprobe.devices.tcp import TcpTransport

    token = "app-host-token"
    (tmp_path / "token").write_text(token + "\n")
    runner = tmp_path / "never-run"
    runner.write_text("#!/bin/sh\nexit 99\n")
    runner.chmod(0o755)
    sent: list[object] = []
    real_call = TcpTransport._call
    monkeypatch.setattr(TcpTransport, "_call", lambda self, header, *a, **k: sent.append(header.get("op"))
                        or real_call(self, header, *a, **k))
    with JvmCoreServer(tmp_path / "jvm", tmp_path / "token", native_runner=runner) as jvm:
        rc = cli.main(["bench", "mobilenet_v2", "--device", f"tcp:127.0.0.1:{jvm.port}", "--token", token,
                       "--runner", "app"])
        err = capsys.readouterr().err
        assert rc == cli.EXIT_USAGE, err
        assert f"runner tcp:127.0.0.1:{jvm.port} offers native, not the app runner" in _flat(err)
        assert sent == []  # refused from the handshake's info: no push, no run
        assert not any(p.is_file() for p in jvm.workdir.rglob("*"))


def test_a_bench_with_runner_app_sends_at_app_and_keeps_the_records_delegate(tmp_path):
    from edgeprobe.devices import Device
    from edgeprobe.devices.mock import MockTransport, ok_record
    from edgeprobe.session import MeasureConfig, MeasureSession

    argvs: list[list[str]] = []

    def handler(run):
        argvs.append(run.argv)
        record = ok_record((2.0, 1.0, 3.0), flavor="app")
        record["runner"]["delegate"] = "vulkan"  # as core's RecordWriter writes it
        run.write_record(record)
        return run.ok()

    art = _fake_artifact(tmp_path, backend="xnnpack")
    with MeasureSession(Device("mock:app", MockTransport(handler), "app")) as s:
        r = s.measure(art, MeasureConfig(iterations=3, warmup=0))
    assert argvs[0][0] == "@app"
    assert r.ok and r.run.runner.flavor == "app" and r.run.runner.delegate == "vulkan"
    from edgeprobe.results import BenchResult

    again = BenchResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again.run.runner.delegate == "vulkan"


def test_runner_app_is_only_for_the_app(tmp_path):
    from edgeprobe.devices import Device
    from edgeprobe.devices.local import LocalTransport

    with pytest.raises(UsageError, match=r"runner app is the edgeprobe Android app's .*edgeprobe app start"):
        Device("local", LocalTransport(), "app").check_runner("pte")
    with pytest.raises(UsageError, match=r"the app runner runs \.pte only"):
        Device("local", LocalTransport(), "app").check_runner("onnx")


# ---------------------------------------------------------------------------------------- records


def test_runner_info_reads_the_delegate_and_records_without_it():
    from edgeprobe.devices.mock import ok_record
    from edgeprobe.results import RunRecord

    with_delegate = ok_record(flavor="app")
    with_delegate["runner"]["delegate"] = "xnnpack"
    assert RunRecord.from_runner_json(with_delegate).runner.delegate == "xnnpack"
    older = ok_record(flavor="native")
    assert RunRecord.from_runner_json(older).runner.delegate is None
    bad = ok_record(flavor="app")
    bad["runner"]["delegate"] = 7
    from edgeprobe.errors import ResultError

    with pytest.raises(ResultError, match=r"runner\.delegate: expected str"):
        RunRecord.from_runner_json(bad)


# ---------------------------------------------------------------------------------------- vulkan rule


def _fake_artifact(tmp_path: Path, backend: str):
    from edgeprobe.lower import Artifact
    from edgeprobe.results import Manifest

    d = tmp_path / f"art-{backend}"
    d.mkdir()
    (d / "model.pte").write_bytes(b"PTE")
    (d / "vectors.epv").write_bytes(b"EPV")
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    m = Manifest(model_ref="m", recipe="fp32", target="executorch", backend=backend, format="pte",
                 artifact_file="model.pte", artifact_sha256=sha(b"PTE"), artifact_size_bytes=3,
                 vectors_file="vectors.epv", vectors_sha256=sha(b"EPV"), inputs=(), outputs=(), rtol=1e-3,
                 atol=1e-3, planned_memory_bytes=(), tool_versions={}, cache_key=f"k-{backend}", created_utc="now")
    return Artifact(d, m)


def test_vulkan_is_refused_without_a_device_that_lists_the_delegate():
    from edgeprobe.lower.capabilities import TargetDevice, resolve

    old_reason = "the executorch wheel's runtime ships no Vulkan delegate"
    with pytest.raises(UnsupportedCombinationError, match=old_reason):
        resolve("pte", "vulkan")
    phone_without = TargetDevice.of("tcp:10.0.0.2:8765", "tcp", {"runtimes": "native,app", "delegates": "xnnpack"})
    with pytest.raises(UnsupportedCombinationError, match=old_reason + r".*tcp:10\.0\.0\.2:8765 lists delegates: "
                                                                        r"xnnpack"):
        resolve("pte", "vulkan", phone_without)
    # only a tcp device's (authenticated) info counts: an ADB phone's getprop dict cannot switch it on
    with pytest.raises(UnsupportedCombinationError, match=old_reason):
        resolve("pte", "vulkan", TargetDevice.of("adb:x", "adb", {"delegates": "vulkan"}))
    with pytest.raises(UnsupportedCombinationError, match=r"--format ptl does not support --backend vulkan"):
        resolve("ptl", "vulkan", TargetDevice.of("tcp:h:1", "tcp", {"delegates": "vulkan"}))  # a .pte's delegate only


def test_vulkan_lowers_for_a_device_that_lists_the_delegate(tmp_path):
    from edgeprobe.lower import capabilities, lower
    from edgeprobe.models import load_model

    phone = capabilities.TargetDevice.of("tcp:10.0.0.3:8765", "tcp", {"delegates": "xnnpack,vulkan"})
    cap = capabilities.resolve("pte", "vulkan", phone)
    assert (cap.target, cap.backend, cap.supported) == ("executorch", "vulkan", True)
    spec = load_model("tiny_cnn")
    with pytest.raises(UnsupportedCombinationError):  # lowering outside the device's block: refused as before
        lower(spec, format="pte", backend="vulkan", out_dir=tmp_path / "refused")
    with capabilities.lowering_for(phone):
        art = lower(spec, format="pte", backend="vulkan", out_dir=tmp_path / "vk", use_cache=False)
    assert art.manifest.backend == "vulkan"
    assert b"VulkanBackend" in art.model_path.read_bytes()  # the delegate's id, as the runtime looks it up
    assert capabilities._TARGET.get() is None  # the block does not leak into later lowering


def test_bench_decides_vulkan_with_the_opened_devices_info(tmp_path):
    """api.bench on a session whose transport is a tcp device: a vulkan artifact runs only where its
    info lists the delegate, and only with the app runner (no network: a mock speaking as tcp)."""
    from edgeprobe import api
    from edgeprobe.devices import Device
    from edgeprobe.devices.mock import MockTransport, ok_record
    from edgeprobe.session import MeasureSession

    class AppOverTcp(MockTransport):
        kind = "tcp"

    def handler(run):
        run.write_record(ok_record((1.0, 1.0), flavor="app"))
        return run.ok()

    art = _fake_artifact(tmp_path, backend="vulkan")
    kw = {"device": "tcp:phone:1", "runner": "app", "iterations": 2, "warmup": 0, "idle_s": 0}
    info = {"runtimes": "native,app", "os": "Android", "machine": "aarch64"}
    def session(delegates: str, runner: str = "app") -> MeasureSession:
        return MeasureSession(Device("tcp:phone:1", AppOverTcp(handler, info={**info, "delegates": delegates}), runner))

    with session("xnnpack") as s, pytest.raises(UnsupportedCombinationError, match=r"lists delegates: xnnpack"):
        api.bench(art, session=s, **kw)
    with session("vulkan", "native") as s, \
            pytest.raises(UsageError, match=r"--backend vulkan runs in the edgeprobe app's in-process runner"):
        api.bench(art, session=s, **{**kw, "runner": "native"})
    with session("vulkan") as s:
        r = api.bench(art, session=s, **kw)
    assert r.ok and r.run.runner.flavor == "app"
