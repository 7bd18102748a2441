"""A real PostgreSQL cluster for tests: initdb + pg_ctl in a temp dir (as the postgres user when root), trust auth on 127.0.0.1."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional


class PostgresUnavailable(Exception):
    """initdb/pg_ctl are missing, or there is no unprivileged user to run them as."""


def find_bin(name: str) -> Optional[str]:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _runner() -> tuple[list[str], Optional[int]]:
    """The argv prefix that runs a command as a user PostgreSQL accepts (not root), and that user's uid."""
    if os.geteuid() != 0:
        return [], None
    import pwd

    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        raise PostgresUnavailable("running as root and there is no 'postgres' user to run the cluster as") from None
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"], uid
    return ["setpriv", f"--reuid={uid}", "--regid=" + str(pwd.getpwnam("postgres").pw_gid), "--clear-groups"], uid


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-2000:]}")
    return p


@contextlib.contextmanager
def postgres_cluster(dbname: str = "edgeprobe") -> Iterator[str]:
    """Start a throwaway cluster on a free port on 127.0.0.1; yield its SQLAlchemy URL; stop and remove it."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise PostgresUnavailable("initdb/pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin "
                                  "(apt-get install postgresql)")
    prefix, uid = _runner()
    root = Path(tempfile.mkdtemp(prefix="edgeprobe-pg-"))
    data = root / "data"
    if uid is not None:
        os.chown(root, uid, -1)
    root.chmod(0o700)
    port = _free_port()
    started = False
    try:
        _run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        (data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
                "-c fsync=off -c max_connections=50")
        _run([*prefix, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-o", opts, "-w", "-t", "60", "start"])
        started = True
        createdb = find_bin("createdb")
        if createdb:
            _run([*prefix, createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", dbname])
        else:
            _run([*prefix, find_bin("psql") or "psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                  "-c", f"CREATE DATABASE {dbname}"])
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{dbname}"
    finally:
        if started:
            subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        for _ in range(3):
            shutil.rmtree(root, ignore_errors=True)
            if not root.exists():
                break
            time.sleep(0.2)


def fresh_database(url: str, name: str) -> str:
    """A new empty database in the cluster at ``url``; its URL."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name
