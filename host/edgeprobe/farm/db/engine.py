"""Open the farm database (SQLite file or PostgreSQL) and bring its schema to this edgeprobe's head revision.

``open_db(url)``: the URL, else ``$EDGEPROBE_FARM_DB``, else the SQLite file ``farm.sqlite`` in the
user data dir. SQLite connections get WAL, a busy timeout, foreign keys and ``BEGIN IMMEDIATE``
transactions (so a transaction that writes never loses a race it started: the writers of several
processes queue instead of failing). PostgreSQL is ``postgresql+psycopg://user:pw@host/db``. Alembic
``upgrade head`` runs on every open, from the migrations shipped in this package, under a lock (a
PostgreSQL advisory lock; SQLite's write lock) so that several processes may open at once.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from edgeprobe.errors import UsageError

ENV_VAR = "EDGEPROBE_FARM_DB"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 30_000
_PG_MIGRATION_LOCK = 0x65_64_67_65  # pg_advisory_xact_lock key: "edge"


class FarmDatabaseError(UsageError):
    """The farm database cannot be opened or is newer than this edgeprobe; one line, password masked."""


@dataclass
class Database:
    """An open farm database: its engine, sessions, and its URL with the password masked."""

    engine: Engine
    url: str

    def __post_init__(self) -> None:
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(self.engine.execution_options(edgeprobe_read_only=True), expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions.begin() as s:
            yield s

    @contextlib.contextmanager
    def reader(self) -> Iterator[Session]:
        """A transaction that only reads: on SQLite a deferred BEGIN, so that watching a run (the
        progress display, ``farm status``) never takes the write lock the workers queue on."""
        with self._readers.begin() as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()


def default_url() -> str:
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env
    import platformdirs

    return f"sqlite:///{Path(platformdirs.user_data_dir('edgeprobe')) / 'farm.sqlite'}"


def mask(url: str) -> str:
    """The URL with its password replaced by ***, whether or not SQLAlchemy can parse it."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable: mask by pattern
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _one_line(exc: BaseException, url: str) -> str:
    msg = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    msg = (msg[0] if msg else type(exc).__name__).strip()
    try:
        pw = make_url(url).password
    except Exception:  # noqa: BLE001
        pw = None
    return msg.replace(str(pw), "***") if pw else msg


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event below issues BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        read_only = conn.get_execution_options().get("edgeprobe_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _alembic_config(connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


def _migrate(engine: Engine) -> None:
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        cfg = _alembic_config(conn)
        script = ScriptDirectory.from_config(cfg)
        head = script.get_current_head()
        current = MigrationContext.configure(conn).get_current_revision()
        if current == head:
            return
        known = {s.revision for s in script.walk_revisions()}
        if current is not None and current not in known:
            raise FarmDatabaseError(f"the farm database {mask(str(engine.url))} is at schema revision {current}, "
                                    f"this edgeprobe knows up to {head}: upgrade edgeprobe")
        command.upgrade(cfg, "head")


def open_db(url: Optional[str] = None) -> Database:
    """Open (creating if need be) and migrate the farm database; ``FarmDatabaseError`` if it cannot."""
    url = url or default_url()
    shown = mask(url)
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"connect_timeout": 10}} if parsed.get_backend_name() == "postgresql" else {}
        engine = create_engine(parsed, **kwargs)
        if engine.dialect.name == "sqlite":
            _sqlite_setup(engine)
        _migrate(engine)
    except FarmDatabaseError:
        raise
    except (SQLAlchemyError, OSError, ValueError, ImportError) as e:
        raise FarmDatabaseError(f"cannot open the farm database {shown}: {_one_line(e, url)}") from None
    return Database(engine=engine, url=shown)
