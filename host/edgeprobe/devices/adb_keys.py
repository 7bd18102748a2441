"""The ADB key pair edgeprobe authenticates with (``$EDGEPROBE_ADB_KEY`` or the user config dir):
created on first use, written public first and private last, both atomically; a half pair is
repaired from the private key and an unusable key is moved aside, never deleted."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Optional

from edgeprobe.errors import TransportError


def key_path() -> Path:
    env = os.environ.get("EDGEPROBE_ADB_KEY")
    if env:
        return Path(env)
    android = Path.home() / ".android" / "adbkey"
    if android.is_file():
        return android
    import platformdirs

    return Path(platformdirs.user_config_dir("edgeprobe")) / "adbkey"


def load_signer(path: Optional[Path] = None):
    """The RSA key adb authenticates with; the pair is created (private key mode 0600) on first use.

    Both files are written atomically, the public key first and the private key last, so a kill
    leaves no pair or a whole one. A half pair left by an older edgeprobe (killed between its two
    writes) is repaired: a missing or damaged public key is derived again from the private key; a
    private key that does not parse, with no public key beside it, was never usable and is moved
    aside (``adbkey.unusable-<time>``, never deleted) and a new pair made."""
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    path = Path(path) if path else key_path()
    pub = Path(f"{path}.pub")
    if path.is_file() and _public_key_text(path) is None and not pub.is_file():
        aside = path.with_name(f"{path.name}.unusable-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
    if not path.is_file():
        _generate_pair(path)
    expected = _public_key_text(path)
    if expected is None:
        raise TransportError(f"{path} is not a readable RSA private key (PEM) but has a public key beside it; "
                             f"move both away to have edgeprobe make a new pair, or point EDGEPROBE_ADB_KEY at another key")
    try:
        current = pub.read_text() if pub.is_file() else None
    except (OSError, UnicodeDecodeError):
        current = None
    if current is None or current.split(" ", 1)[0].strip() != expected.split(" ", 1)[0]:
        _atomic_key_write(pub, expected.encode(), 0o644, "adbkey-public")  # derived again: a half pair repaired
        current = expected
    return PythonRSASigner(current, path.read_text())


def _public_key_text(private: Path) -> Optional[str]:
    """adb's public key line (base64 of the Android RSA struct, then `` user@host``) for a private
    key file; None when that file is not a readable PEM private key."""
    import base64

    from adb_shell.auth.keygen import encode_pubkey, get_user_info

    try:
        return base64.b64encode(encode_pubkey(str(private))).decode() + get_user_info()
    except Exception:  # noqa: BLE001 - truncated, empty or not a key
        return None


def _atomic_key_write(path: Path, data: bytes, perm: int, fault: str) -> None:
    from edgeprobe.fsutil import atomic_write_bytes

    atomic_write_bytes(path, data, fault=fault, perm=perm)


def _generate_pair(path: Path) -> None:
    """A new 2048-bit pair: public key file first, private key last (the private key marks a whole pair)."""
    import tempfile

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from edgeprobe.fsutil import _fault_point, fsync_dir

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}*.tmp-*"):  # of a generation killed over a minute ago
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 60:
                stale.unlink()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)  # mode 0600 from the start
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        public = _public_key_text(Path(tmp))
        assert public is not None
        _atomic_key_write(Path(f"{path}.pub"), public.encode(), 0o644, "adbkey-public")
        _fault_point("adbkey-private:temp-written")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
