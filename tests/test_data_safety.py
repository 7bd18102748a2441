"""Data safety (issue 11, findings 5 and 6, and the saves): the runner bundle is verified against its
manifest before it is used or pushed, the install never touches anything but a bundle, the ADB key
pair survives a kill between its two files, and a failed save keeps the previous record.

The kill -9 variants of each write are in test_faults.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edgeprobe
from edgeprobe.errors import RunnerNotBuiltError, TransportError, UsageError
from edgeprobe.native import BINARY, BUNDLE_MANIFEST, build_native_runner, find_native_runner, verify_bundle

from adbd import TestAdbd  # tests/ is on sys.path (rootdir conftest)

MACHINE = os.uname().machine


@pytest.fixture()
def bundle_copy(tmp_path, native_runner, monkeypatch) -> Path:
    """A private copy of the verified runner bundle at ``<root>/<machine>``, made the installed one."""
    root = tmp_path / "runners"
    bundle = root / MACHINE
    shutil.copytree(native_runner.parent.parent, bundle)
    monkeypatch.setenv("EDGEPROBE_RUNNER_DIR", str(root))
    monkeypatch.delenv("EDGEPROBE_NATIVE_RUNNER", raising=False)
    assert find_native_runner() == bundle / "bin" / BINARY
    return bundle


def test_half_written_runner_bundle_is_refused(bundle_copy):
    """A killed `runner build` left a half-written bundle that was then used (it was only checked to exist)."""
    lib = sorted((bundle_copy / "lib").glob("*.so"))[0]
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 2])  # what an install killed mid-copy leaves
    with pytest.raises(RunnerNotBuiltError, match=rf"{lib.name} does not match the sha256.*rebuild with "
                                                  r"`edgeprobe runner build`"):
        find_native_runner()
    lib.write_bytes(data)
    assert find_native_runner() == bundle_copy / "bin" / BINARY
    (bundle_copy / "lib" / "libextra.so").write_bytes(b"\x7fELF")  # a file the build did not install
    with pytest.raises(RunnerNotBuiltError, match="libextra.so not in its manifest"):
        find_native_runner()
    (bundle_copy / "lib" / "libextra.so").unlink()
    lib.unlink()
    with pytest.raises(RunnerNotBuiltError, match=f"{lib.name} missing"):
        find_native_runner()


def test_bundle_without_manifest_is_refused_with_the_rebuild_hint(bundle_copy):
    (bundle_copy / BUNDLE_MANIFEST).unlink()  # a bundle from an older edgeprobe, or an install killed before its end
    with pytest.raises(RunnerNotBuiltError, match=r"no bundle.json.*rebuild with `edgeprobe runner build`"):
        find_native_runner()
    (bundle_copy / BUNDLE_MANIFEST).write_text('{"schema_version": 1, "files": ')
    with pytest.raises(RunnerNotBuiltError, match="unreadable"):
        verify_bundle(bundle_copy)


def test_native_runner_override_is_verified_when_it_sits_in_a_bundle(bundle_copy, tmp_path, monkeypatch):
    """$EDGEPROBE_NATIVE_RUNNER: a bare binary is the user's own build (used as given); one inside a
    bundle with a manifest is verified like the installed bundle."""
    bare = tmp_path / "mine" / BINARY
    bare.parent.mkdir()
    shutil.copy2(bundle_copy / "bin" / BINARY, bare)
    monkeypatch.setenv("EDGEPROBE_NATIVE_RUNNER", str(bare))
    assert find_native_runner() == bare
    inside = bundle_copy / "bin" / BINARY
    monkeypatch.setenv("EDGEPROBE_NATIVE_RUNNER", str(inside))
    assert find_native_runner() == inside
    inside.write_bytes(inside.read_bytes()[:1000])
    with pytest.raises(RunnerNotBuiltError, match="does not match the sha256"):
        find_native_runner()
    monkeypatch.setenv("EDGEPROBE_NATIVE_RUNNER", str(tmp_path / "nope"))
    with pytest.raises(RunnerNotBuiltError, match="EDGEPROBE_NATIVE_RUNNER"):
        find_native_runner()


def test_adb_deploy_refuses_a_damaged_bundle_and_pushes_nothing(bundle_copy, tmp_path, adb_key):
    from edgeprobe.devices import deploy_native_runner
    from edgeprobe.devices.adb import AdbTransport

    lib = sorted((bundle_copy / "lib").glob("*.so"))[0]
    lib.write_bytes(lib.read_bytes()[:4096])
    with TestAdbd(tmp_path / "dev") as d:
        t = AdbTransport(f"127.0.0.1:{d.port}", auth_timeout_s=5)
        try:
            with pytest.raises(RunnerNotBuiltError, match="rebuild with `edgeprobe runner build`"):
                deploy_native_runner(t)
        finally:
            t.close()
        assert not (d.root / "data/local/tmp/edgeprobe/runner").exists()


def test_runner_build_refuses_a_destination_that_is_not_a_bundle(tmp_path):
    """The install replaces its destination as a whole, so it must never be a user's directory."""
    user = tmp_path / "project"
    (user / "src").mkdir(parents=True)
    (user / "src" / "main.c").write_text("int main(){}")
    with pytest.raises(UsageError, match="not a runner bundle"):
        build_native_runner(user, log=lambda _m: None)
    assert (user / "src" / "main.c").read_text() == "int main(){}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


# ------------------------------------------------------------------------------------------ ADB key pair


@pytest.fixture()
def adb_key(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "keys" / "adbkey"
    monkeypatch.setenv("EDGEPROBE_ADB_KEY", str(path))
    return path


def _old_keygen_private_only(path: Path) -> bytes:
    """What adb-shell's keygen (the old code) leaves when killed between the private and the public key."""
    from adb_shell.auth.keygen import keygen

    path.parent.mkdir(parents=True, exist_ok=True)
    keygen(str(path))
    Path(f"{path}.pub").unlink()
    return path.read_bytes()


def _connect(d: TestAdbd) -> None:
    from edgeprobe.devices.adb import AdbTransport

    t = AdbTransport(f"127.0.0.1:{d.port}", auth_timeout_s=5)
    try:
        assert t.info()["model"] == "test-adbd"
    finally:
        t.close()


def test_adb_private_key_without_public_key_is_repaired(tmp_path, adb_key):
    """Killed between the two files, every later run failed until the user deleted the key by hand."""
    private = _old_keygen_private_only(adb_key)
    with TestAdbd(tmp_path / "dev") as d:
        _connect(d)  # the public key is derived again from the private one
        assert adb_key.read_bytes() == private  # the identity the phone may already trust is kept
        assert Path(f"{adb_key}.pub").is_file() and len(d.authorized) == 1
        _connect(d)  # and the phone's stored key still matches: signature accepted, no new prompt
        assert len(d.authorized) == 1


def test_adb_damaged_public_key_is_rewritten(tmp_path, adb_key):
    from edgeprobe.devices.adb import load_signer

    load_signer()
    pub = Path(f"{adb_key}.pub")
    good = pub.read_text()
    pub.write_text(good[:100])  # truncated mid-write
    assert load_signer().GetPublicKey().split()[0] == good.split()[0]
    assert pub.read_text().split()[0] == good.split()[0]


def test_adb_unusable_private_key_is_moved_aside_and_replaced(tmp_path, adb_key):
    adb_key.parent.mkdir(parents=True)
    adb_key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq")  # old keygen killed mid-write
    with TestAdbd(tmp_path / "dev") as d:
        _connect(d)
    aside = [p.name for p in adb_key.parent.iterdir() if p.name.startswith("adbkey.unusable-")]
    assert len(aside) == 1  # kept, never deleted
    assert (adb_key.stat().st_mode & 0o777) == 0o600 and Path(f"{adb_key}.pub").is_file()
    assert [p.name for p in adb_key.parent.iterdir() if ".tmp-" in p.name] == []


def test_adb_unreadable_private_key_beside_a_public_key_says_what_to_do(adb_key):
    from edgeprobe.devices.adb import load_signer

    adb_key.parent.mkdir(parents=True)
    adb_key.write_text("not a key")
    Path(f"{adb_key}.pub").write_text("QUFBQQ== user@host")
    with pytest.raises(TransportError, match="not a readable RSA private key.*move both away"):
        load_signer()
    assert adb_key.read_text() == "not a key"


# ------------------------------------------------------------------------------------------ saves

_SAVE_UNDER_FSIZE_LIMIT = textwrap.dedent("""
    import resource, signal, sys
    from edgeprobe.results import BenchResult
    r = BenchResult.load(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG, like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))
    try:
        r.save(sys.argv[2])
    except OSError as exc:
        print("save failed:", exc)
        sys.exit(3)
""")


@pytest.fixture(scope="module")
def real_result(tmp_path_factory, native_runner, tiny_pte):
    path = tmp_path_factory.mktemp("result") / "first.json"
    r = edgeprobe.bench(tiny_pte, device="local", iterations=3, warmup=0)
    assert r.ok, r.run.error
    r.save(path)
    return path


def test_failed_save_keeps_the_previous_record(tmp_path, real_result):
    """write_text truncated the record first: a failed write (full disk) lost the previous one."""
    target = tmp_path / "result.json"
    shutil.copy(real_result, target)
    before = target.read_bytes()
    assert len(before) > 512
    proc = subprocess.run([sys.executable, "-c", _SAVE_UNDER_FSIZE_LIMIT, str(real_result), str(target)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # the temp file is gone too
