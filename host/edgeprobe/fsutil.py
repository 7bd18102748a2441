"""Crash-safe writes: a file or a whole directory appears complete or not at all.

Every write that a later run reads back (artifacts, the runner bundle, results, the ADB key pair)
goes through here: the new content is written to a temporary name in the destination's own
directory, flushed to disk, and renamed over the destination (``os.replace`` for a file, an atomic
exchange for a directory). A process killed at any point leaves the old content or the new one,
plus at most a hidden temporary that nothing reads.

``_fault_point(name)`` is the hook the fault-injection tests (tests/test_faults.py) use to kill a
process between two steps: it does nothing unless ``$EDGEPROBE_FAULT_POINT`` names that point.
No torch import here (``results.py`` uses it).
"""

from __future__ import annotations

import contextlib
import hashlib
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path
from typing import IO, Iterator, Optional, Union

FAULT_ENV = "EDGEPROBE_FAULT_POINT"

PathLike = Union[str, Path]


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fault_point(name: str) -> None:
    """Test hook: SIGKILL this process here when ``$EDGEPROBE_FAULT_POINT`` equals ``name``."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: PathLike) -> None:
    """Flush a directory's entries (a rename is durable only once its directory is)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: PathLike) -> None:
    """Flush every file and directory under ``root`` (before it is renamed into place)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


@contextlib.contextmanager
def atomic_writer(path: PathLike, mode: str = "w", *, fault: str = "write", perm: Optional[int] = None,
                  **open_kw) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it is flushed and renamed to ``path``.

    On an exception the temporary is removed and ``path`` is untouched. ``perm``: the file mode
    (default 0644 less the umask, as ``open`` would give)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=parent)
    try:
        if perm is None:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        else:
            os.fchmod(fd, perm)
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _fault_point(f"{fault}:temp-written")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)


def atomic_write_bytes(path: PathLike, data: bytes, *, fault: str = "write", perm: Optional[int] = None) -> Path:
    with atomic_writer(path, "wb", fault=fault, perm=perm) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, *, fault: str = "write", perm: Optional[int] = None) -> Path:
    with atomic_writer(path, "w", fault=fault, perm=perm, encoding="utf-8") as f:
        f.write(text)
    return Path(path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: PathLike, final: PathLike, *, fault: str) -> None:
    """Put the complete directory ``new`` at ``final`` (beside it, same filesystem).

    Where ``final`` exists, the two are exchanged atomically and the old one is deleted after;
    where the kernel cannot exchange, the old one is renamed aside first (a kill between the two
    renames leaves no ``final``, never a mixed one; the next write cleans up the leftovers)."""
    new, final = Path(new), Path(final)
    if not os.path.lexists(final):
        os.rename(new, final)
    elif _exchange(new, final):
        _fault_point(f"{fault}:swapped")
        shutil.rmtree(new, ignore_errors=True)  # now holds the old content
    else:
        aside = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, aside)
        _fault_point(f"{fault}:old-aside")
        os.rename(new, final)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(final.parent)


def remove_leftovers(final: PathLike, *markers: str) -> None:
    """Delete hidden temporaries of ``final`` left by killed writers (``.<name><marker>*``).

    Call only while holding ``locked()`` for ``final``: then no live writer owns them."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    for entry in final.parent.iterdir():
        if entry.name.startswith(f".{final.name}.") and any(
                entry.name.startswith(f".{final.name}{m}") for m in markers):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()


def make_temp_dir(final: PathLike, marker: str) -> Path:
    """A hidden directory beside ``final`` (``.<name><marker>XXXX``) with the mode ``mkdir`` would
    give (``mkdtemp`` makes it 0700, and it becomes ``final`` when renamed)."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{marker}", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


@contextlib.contextmanager
def locked(lock_path: PathLike) -> Iterator[None]:
    """An exclusive advisory lock (flock) on ``lock_path``, released when the process dies."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
