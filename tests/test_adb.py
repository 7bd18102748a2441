"""ADB transport (adb-shell) against the test adbd that speaks the real ADB protocol on loopback."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

import edgeprobe
from edgeprobe.devices.adb import AdbTransport
from edgeprobe.errors import TransportError

from adbd import TestAdbd  # tests/ is on sys.path (rootdir conftest)


@pytest.fixture()
def adb_key(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "adbkey"
    monkeypatch.setenv("EDGEPROBE_ADB_KEY", str(path))
    return path


def test_auth_public_key_then_signature_then_rejected(tmp_path, adb_key):
    with TestAdbd(tmp_path / "dev") as d:
        t = AdbTransport(f"127.0.0.1:{d.port}", auth_timeout_s=5)  # key created, offered, "allowed"
        t.close()
        assert adb_key.is_file() and (adb_key.stat().st_mode & 0o777) == 0o600
        assert len(d.authorized) == 1
        t = AdbTransport(f"127.0.0.1:{d.port}", auth_timeout_s=5)  # now the signature is accepted
        assert t.info()["model"] == "test-adbd"
        t.close()
        assert len(d.authorized) == 1
    with TestAdbd(tmp_path / "dev2", accept_any_key=False) as d:
        with pytest.raises(TransportError, match="not authorized.*Allow USB debugging"):
            AdbTransport(f"127.0.0.1:{d.port}", auth_timeout_s=1)


def test_push_pull_run(tmp_path, adb_key):
    data = os.urandom(5_000_000)
    (tmp_path / "f.bin").write_bytes(data)
    with TestAdbd(tmp_path / "dev") as d:
        t = AdbTransport(f"127.0.0.1:{d.port}", auth_timeout_s=5)
        try:
            seen = []
            t.push(tmp_path / "f.bin", "/data/local/tmp/edgeprobe/f.bin", progress=lambda done, total: seen.append(done))
            assert seen and t.sha256("/data/local/tmp/edgeprobe/f.bin") == hashlib.sha256(data).hexdigest()
            t.pull("/data/local/tmp/edgeprobe/f.bin", tmp_path / "g.bin")
            assert (tmp_path / "g.bin").read_bytes() == data
            r = t.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout_s=10)
            assert (r.exit_code, r.stdout, r.stderr.strip()) == (3, "out\n", "err")
            r = t.run(["sh", "-c", "kill -SEGV $$"], timeout_s=10)
            assert r.exit_code == -11 and not r.timed_out
            r = t.run(["sleep", "30"], timeout_s=1)
            assert r.timed_out and r.exit_code is None and r.duration_s < 10
        finally:
            t.close()


def test_connection_dropped_mid_push_leaves_no_runnable_file(tmp_path, adb_key):
    (tmp_path / "f.bin").write_bytes(os.urandom(2_000_000))
    with TestAdbd(tmp_path / "dev", drop_after_send_bytes=300_000) as d:
        t = AdbTransport(f"127.0.0.1:{d.port}", auth_timeout_s=5, transport_timeout_s=3)
        with pytest.raises(TransportError, match="push of"):
            t.push(tmp_path / "f.bin", "/data/local/tmp/edgeprobe/model.pte")
        t.close()
        assert not (d.root / "data/local/tmp/edgeprobe/model.pte").exists()


def test_bench_over_adb_deploys_the_native_runner_once(tmp_path, adb_key, native_runner, tiny_pte, monkeypatch):
    with TestAdbd(tmp_path / "dev") as d:
        dev = f"adb:127.0.0.1:{d.port}"
        r = edgeprobe.bench(tiny_pte, device=dev, iterations=4, warmup=1)
        assert r.ok, r.run.error
        assert r.device.transport == "adb" and r.run.runner.flavor == "native"
        assert r.run.verification.passed and len(r.run.timing.iteration_ns) == 4
        deployed = d.root / "data/local/tmp/edgeprobe/runner" / os.uname().machine / "bin/edgeprobe_runner"
        model = d.root / "data/local/tmp/edgeprobe" / tiny_pte.manifest.cache_key / "model.pte"
        first, first_model = deployed.stat().st_mtime_ns, model.stat().st_mtime_ns
        r = edgeprobe.bench(tiny_pte, device=dev, iterations=2, warmup=0)
        assert r.ok  # same sha256 on the device: neither the runner nor the artifact is pushed again
        assert deployed.stat().st_mtime_ns == first and model.stat().st_mtime_ns == first_model


@pytest.mark.real_peer("adb")
@pytest.mark.skipif(shutil.which("adb") is None, reason="Debian's adb client is not installed (apt-get install adb)")
def test_debian_adb_client_talks_to_the_test_adbd(tmp_path):
    """Conformance: the real adb client connects, runs a shell, pushes and pulls."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        server_port = s.getsockname()[1]
    env = {**os.environ, "HOME": str(tmp_path), "ANDROID_ADB_SERVER_PORT": str(server_port)}
    adb = ["adb", "-P", str(server_port)]
    data = os.urandom(1_000_000)
    (tmp_path / "up.bin").write_bytes(data)
    with TestAdbd(tmp_path / "dev") as d:
        serial = f"127.0.0.1:{d.port}"
        try:
            run = lambda *a: subprocess.run([*adb, *a], env=env, capture_output=True, text=True, timeout=60)  # noqa: E731
            # With a new key adb reports "failed to authenticate" while the phone would show its
            # prompt; the test adbd then allows the key (as a user would) and the device comes online.
            out = run("connect", serial).stdout
            assert "connected" in out or "failed to authenticate" in out, out
            assert run("-s", serial, "wait-for-device").returncode == 0
            out = run("-s", serial, "shell", "echo", "hello-from-adbd")
            assert "hello-from-adbd" in out.stdout, out
            assert run("-s", serial, "shell", "exit 3").returncode == 3  # shell v2: the exit code comes back
            assert any(s.startswith("shell,v2") for s in d.services), d.services
            assert run("-s", serial, "push", str(tmp_path / "up.bin"), "/data/local/tmp/up.bin").returncode == 0
            assert (d.root / "data/local/tmp/up.bin").read_bytes() == data
            assert run("-s", serial, "pull", "/data/local/tmp/up.bin", str(tmp_path / "down.bin")).returncode == 0
            assert (tmp_path / "down.bin").read_bytes() == data
        finally:
            subprocess.run([*adb, "kill-server"], env=env, capture_output=True, timeout=30)


def test_connection_dropped_mid_run_is_retried_then_reported(tmp_path, adb_key, native_runner, tiny_pte):
    """The adbd drops the connection while the runner runs: edgeprobe reconnects, re-checks the
    artifact's sha256 and runs again; when it keeps dropping, a clear error, not a number."""
    with TestAdbd(tmp_path / "dev", drop_on_shell="--iterations", drop_times=1) as d:
        r = edgeprobe.bench(tiny_pte, device=f"adb:127.0.0.1:{d.port}", iterations=2, warmup=0)
        assert r.ok, r.run.error
        assert any(n.startswith("run retried after:") for n in r.device_state.notes), r.device_state.notes
        assert sum("--iterations" in c for c in d.shell_log) == 2
    with TestAdbd(tmp_path / "dev2", drop_on_shell="--iterations", drop_times=99) as d:
        with pytest.raises(TransportError, match=r"failed 2 time\(s\) with the connection lost"):
            edgeprobe.bench(tiny_pte, device=f"adb:127.0.0.1:{d.port}", iterations=2, warmup=0)


def test_devices_lists_adb_addresses_with_their_health(tmp_path, adb_key):
    """`edgeprobe devices --adb` connects to each address: model, ABI and battery for a live one,
    the reason for a dead one; the USB scan says why it was skipped when libusb is absent."""
    import socket
    import sys

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens here any more
    battery = "Current Battery Service state:\n  AC powered: false\n  USB powered: true\n  level: 77\n  temperature: 301\n"
    with TestAdbd(tmp_path / "dev", dumpsys={"battery": battery}) as d:
        env = {**os.environ, "EDGEPROBE_ADB_ADDRESSES": f"127.0.0.1:{dead_port}", "COLUMNS": "250"}
        p = subprocess.run([sys.executable, "-m", "edgeprobe", "devices", "--adb", f"127.0.0.1:{d.port}"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    live = next(line for line in p.stdout.splitlines() if f"adb:127.0.0.1:{d.port}" in line)
    assert "test-adbd" in live and "ok (battery 77 % charging" in live
    gone = next(line for line in p.stdout.splitlines() if f"adb:127.0.0.1:{dead_port}" in line)
    assert "unreachable" in gone
    try:
        import usb1  # noqa: F401
    except ImportError:
        assert "USB scan skipped" in p.stderr


@pytest.mark.real_peer("adb")
def test_a_session_deploys_and_describes_the_device_once_for_many_measurements(tmp_path, adb_key, native_runner,
                                                                               tiny_pte):
    """Three measurements through one session: the runner bundle is checked file by file (sha256 on
    the device) once, not once per measurement; each measurement still verifies its artifact."""
    if os.environ.get("EDGEPROBE_NATIVE_RUNNER"):
        pytest.skip("runner given as a single file (EDGEPROBE_NATIVE_RUNNER); deployment needs the installed bundle")
    from edgeprobe.native import install_dir, verify_bundle
    from edgeprobe.session import MeasureConfig, open_session

    n_files = len(verify_bundle(install_dir(os.uname().machine)))
    with TestAdbd(tmp_path / "dev") as d:
        with open_session(f"adb:127.0.0.1:{d.port}") as s:
            results = [s.measure(tiny_pte, MeasureConfig(iterations=2, warmup=0)) for _ in range(3)]
            assert s.stats.deploys == 1 and s.stats.measurements == 3
        assert all(r.ok for r in results), [r.run.error for r in results]
        bundle_hashes = [c for c in d.shell_log if c.startswith("sha256sum") and "/runner/" in c]
        model_hashes = [c for c in d.shell_log if c.startswith("sha256sum") and "model.pte" in c]
        assert len(bundle_hashes) == n_files, bundle_hashes
        assert len(model_hashes) >= 3  # pushed once, verified before each of the three runs
        assert sum("--iterations" in c for c in d.shell_log) == 3
