"""Where the trace database lives, how connections to it are set up, and how its failures are explained.

SQLite is configured for one writer and many readers across processes: WAL journal (readers never block the
writer and see only committed data), foreign keys on, a busy timeout so a briefly held lock is waited for,
and transactions that ttc begins itself. Python's sqlite3 module would otherwise start transactions late and
implicitly, so a writer could read a snapshot and then find it stale when it first writes (an immediate
"database is locked" that no timeout helps); the writer therefore opens every transaction with
``BEGIN IMMEDIATE``, taking the write lock up front, and readers with a plain ``BEGIN`` for a consistent
snapshot.

A PostgreSQL server gets the same wait: its ``lock_timeout`` is set to the busy timeout, so a table or row that
another connection holds is waited for that long and then reported as locked, as SQLite's busy error is.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import platformdirs
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from ttc.envvars import env_text
from ttc.errors import RejectedData, StorageError
from ttc.storage.models import LATER_TABLES, Base

DEFAULT_BUSY_TIMEOUT_S: Final = 10.0
MAX_BUSY_TIMEOUT_S: Final = 2147483.0
"""SQLite holds the busy timeout in a C int of milliseconds; a longer one overflows to 0 (no waiting at all)."""
ENV_VAR: Final = "TTC_DB"
CREATION_LOCK: Final = 0x7474_635F_7363_6865
"""The key of the PostgreSQL advisory lock that a store being opened for writing holds while it checks and creates
the tables: two processes creating the same tables at once collide in the catalog (a duplicate key error)."""
LOCK_NOT_AVAILABLE: Final = "55P03"
"""PostgreSQL's SQLSTATE for a lock not granted within ``lock_timeout``: the server's "database is locked"."""


@dataclass(frozen=True)
class Location:
    """A resolved database: its URL and, for SQLite, the file (named in every error message)."""

    url: URL
    path: Path | None

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        if self.is_sqlite and self.url.database:
            return self.url.database
        return self.url.render_as_string(hide_password=True)


_IN_MEMORY = ("in-memory SQLite ({given!r}) cannot hold a trace store: the writer thread and the readers each open "
              "their own connection and would each see an empty database; pass a file path instead (or, in Python, "
              "store=False to write no traces)")


def default_path() -> Path:
    return Path(platformdirs.user_data_dir("ttc")) / "traces.db"


def resolve_location(url: str | os.PathLike[str] | None, *, create: bool = True) -> Location:
    """``url`` -> env ``TTC_DB`` -> the per-user data directory; a plain path means an SQLite file there.

    ``create=False`` (a reader) makes no directory and refuses an SQLite file that is not there: a mistyped path
    should say so, not read as an empty store.
    """
    # " /data/t.db" means /data/t.db, not a folder named " " in the working directory (ttc.envvars).
    given = os.fspath(url) if url is not None else env_text(ENV_VAR)
    if given is not None and not given.strip():
        raise StorageError(f"the trace database path is empty: pass a file path or URL (or unset {ENV_VAR} to use "
                           f"the default, {default_path()})")
    location = _resolve(given)
    if location.path is not None:
        _place(location.path, create=create)
    return location


def _resolve(given: str | None) -> Location:
    if given is None:
        return _sqlite_file(default_path())
    if given == ":memory:":  # sqlite3's name for an in-memory database, which would be a file of that name here
        raise StorageError(_IN_MEMORY.format(given=given))
    if "://" not in given:
        return _sqlite_file(Path(given).expanduser())
    try:
        parsed = make_url(given)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise StorageError(
            f"{given!r} is neither a file path nor a valid SQLAlchemy URL ({exc}); "
            "pass a path such as ~/traces.db or a URL such as postgresql://user@host/db "
            f"(argument or {ENV_VAR})"
        ) from exc
    if parsed.get_backend_name() != "sqlite":
        return Location(parsed, None)
    database = parsed.database or ""
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        raise StorageError(_IN_MEMORY.format(given=given))
    if database.startswith("file:"):  # an SQLite URI: its query (mode=ro, cache=shared) is SQLite's to read
        return Location(parsed.update_query_dict({"uri": "true"}), None)
    return _sqlite_file(Path(database).expanduser(), parsed)


def _sqlite_file(path: Path, url: URL | None = None) -> Location:
    path = path.absolute()
    url = URL.create("sqlite", database=str(path)) if url is None else url.set(database=str(path))
    return Location(url, path)


def _place(path: Path, *, create: bool) -> None:
    """Make the directory a store's file goes in; a reader's file must already be there."""
    if not create:
        if not path.is_file():
            raise StorageError(f"there is no trace database at {path}: check the path (or {ENV_VAR}); a store is "
                               "made by the first solve or eval that writes to it")
        return
    if path.parent.exists() and not path.parent.is_dir():
        raise StorageError(
            f"cannot put the trace database at {path}: {path.parent} is a file, not a directory; "
            f"set {ENV_VAR} to a path in a writable directory"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"cannot create the directory {path.parent} for the trace database {path} "
            f"({exc.strerror or exc}); make it writable or set {ENV_VAR} to a path in a writable directory"
        ) from exc


def reads_snapshot(location: Location) -> bool:
    """Whether a reader opens this SQLite file as a snapshot (SQLite's ``immutable=1``): the file's folder is not
    writable and holds no ``-wal`` file.

    A read-only connection to a WAL database still creates the ``-wal`` and ``-shm`` files beside it when no writer
    has, and in a folder it cannot write to that fails ("attempt to write a readonly database"). Without a ``-wal``
    file every committed trace is in the database file itself, so reading the file as it is shows them all; what a
    writer commits afterwards does not show. Where a ``-wal`` file exists, the open goes ahead and explains any
    failure, since a snapshot would miss the traces it holds."""
    path = location.path
    return path is not None and not _folder_writable(path.parent) and not Path(f"{path}-wal").exists()


def _folder_writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def make_engine(location: Location, *, busy_timeout_s: float, writer: bool, own_tables: Collection[str] = (),
                read_only: bool = False, snapshot: bool = False) -> Engine:
    """An engine for the writer thread (one connection, ``BEGIN IMMEDIATE``) or for readers (a pool).

    The writer switches the file to WAL, which persists in the file, except in another program's database that
    already has tables named like ``own_tables``: the store refuses that file, and leaves it as it found it.
    ``read_only`` opens an SQLite file with ``mode=ro``, so that a reader can change no data (SQLite still keeps
    its ``-wal`` and ``-shm`` files beside a WAL database); ``snapshot`` (see ``reads_snapshot``) opens it
    ``immutable`` too, creating nothing.
    """
    if not location.is_sqlite:
        return _server_engine(location, busy_timeout_s)
    if read_only and location.path is None:  # an SQLite URI: a reader opens it read-only too, creating nothing
        location = Location(location.url.update_query_dict({"mode": "ro"}), None)
    connect_args: dict[str, Any] = {"timeout": busy_timeout_s, "check_same_thread": False}
    if location.path is None:
        connect_args["uri"] = True
    if read_only and location.path is not None:
        uri = f"{location.path.as_uri()}?mode=ro{'&immutable=1' if snapshot else ''}"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, check_same_thread=False)

        engine = _create(location, creator=connect)
    else:
        engine = _create(location, connect_args=connect_args)
    busy_ms = max(0, int(busy_timeout_s * 1000))
    begin_sql = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None  # ttc emits BEGIN itself (see the module docstring)
        cursor = dbapi_connection.cursor()
        try:
            if writer and not _foreign(cursor, own_tables):
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")  # durable across crashes in WAL mode
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql(begin_sql)

    return engine


def _server_engine(location: Location, busy_timeout_s: float) -> Engine:
    """An engine for a server database. On PostgreSQL every connection waits for a lock at most the busy timeout
    (``lock_timeout``, set by SQL so that any driver takes it; its 0 means "wait forever", the opposite of SQLite's,
    so the shortest wait is 1 ms), and transactions read committed data: the creation lock and ``claim_run``'s row
    lock rely on a statement seeing what the transaction it waited for committed, which a server defaulting to
    REPEATABLE READ would hide."""
    if location.url.get_backend_name() != "postgresql":
        return _create(location, pool_pre_ping=True)
    # libpq's own default is to wait for ever (psycopg's, 130 s) on a server that accepts and never answers;
    # ttc's wait is the busy timeout, as for a lock, unless the URL names its own.
    connect_args = {} if "connect_timeout" in location.url.query else {
        "connect_timeout": max(2, math.ceil(min(busy_timeout_s, 60)))}
    engine = _create(location, pool_pre_ping=True, isolation_level="READ COMMITTED", connect_args=connect_args)
    lock_ms = max(1, int(busy_timeout_s * 1000))

    @event.listens_for(engine, "connect")
    def _lock_timeout(dbapi_connection: Any, _record: object) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET lock_timeout = {lock_ms}")
        finally:
            cursor.close()
        dbapi_connection.commit()  # a SET in a driver's implicit transaction would be undone by its rollback

    return engine


def lock_for_creation(connection: Connection) -> None:
    """Make the writers that open a server database take turns until their transaction ends, so that the second
    one sees the tables the first created. SQLite's ``BEGIN IMMEDIATE`` already makes them take turns."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({CREATION_LOCK})")


def ttc_tables(connection: Connection) -> set[str]:
    """The names of ttc's tables that the database holds; none at all means no store was created there yet."""
    return set(inspect(connection).get_table_names()) & set(Base.metadata.tables)


def refuse_foreign_file(connection: Connection, location: Location) -> None:
    """Refuse an SQLite file that holds tables and none of ttc's: another program's database, which a store would
    otherwise be created in (or be said to be damaged, or newer, by its user_version, which other programs set
    too). A server database is shared by design, so its other tables say nothing."""
    if not location.is_sqlite:
        return
    names = {row[0] for row in connection.exec_driver_sql(_SCHEMA_ENTRIES)}
    if not names or names & set(Base.metadata.tables):
        return
    shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
    raise StorageError(f"{location.describe()} is an SQLite database but not a ttc trace store: it holds other "
                       f"tables or views ({shown}) and none of ttc's tables; set {ENV_VAR} to another file (a new "
                       "one, or a ttc store)")


_SCHEMA_ENTRIES = "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite~_%' ESCAPE '~'"
"""Every table, view, index and trigger a program made in an SQLite file: a file holding only a view is another
program's as much as one holding a table."""


def check_layout(connection: Connection, location: Location) -> None:
    """Refuse a store whose tables or columns are not the ones this ttc writes: a dropped table would otherwise be
    created again, empty, and its done traces would read as complete without their events. Only the
    ``LATER_TABLES`` may be missing (a store written before they existed)."""
    inspector = inspect(connection)
    present = set(inspector.get_table_names())
    problems: list[str] = []
    for name, table in Base.metadata.tables.items():
        if name not in present:
            if name not in LATER_TABLES:
                problems.append(f"table {name} is missing")
            continue
        columns = {column["name"] for column in inspector.get_columns(name)}
        problems += [f"column {name}.{c.name} is missing" for c in table.columns if c.name not in columns]
    if problems and not location.is_sqlite:  # a shared database: another program may own a table named like ttc's
        raise StorageError(f"the trace database {location.describe()} is not laid out as ttc writes it "
                           f"({'; '.join(problems)}): another program's tables may have ttc's names (runs, events, "
                           "...), or the store was changed outside ttc; give ttc a database of its own, or a schema "
                           "of its own in this one (add ?options=-csearch_path%3Dttc to the URL, after CREATE SCHEMA "
                           "ttc)")
    if problems:
        raise StorageError(f"the trace database {location.describe()} is not laid out as ttc writes it "
                           f"({'; '.join(problems)}): it was changed outside ttc; restore it from a copy, or set "
                           f"{ENV_VAR} to another file")


def _foreign(cursor: sqlite3.Cursor, own_tables: Collection[str]) -> bool:
    """Whether the file may be another program's database, whose journal mode (which persists in the file) is not
    ttc's to change: it has tables, and none of them is ttc's or ttc never stamped it (user_version 0). Other
    programs set user_version too, so the stamp alone does not make a file ttc's. An empty file is not foreign: it
    becomes a store."""
    if not own_tables:
        return False
    names = {row[0] for row in cursor.execute(_SCHEMA_ENTRIES)}
    if not names:
        return False
    return not names & set(own_tables) or cursor.execute("PRAGMA user_version").fetchone()[0] == 0


def _create(location: Location, **options: Any) -> Engine:
    try:
        return create_engine(location.url, **options)
    except (NoSuchModuleError, ImportError) as exc:
        driver = location.url.drivername
        if driver == "postgres":  # the scheme of Heroku's and others' URLs, which SQLAlchemy does not know
            raise StorageError(
                f"{location.describe()} starts with postgres://, which ttc does not read as PostgreSQL: write "
                f"it as postgresql+psycopg://... (the rest of the URL stays as it is), as the argument or {ENV_VAR}"
            ) from exc
        raise StorageError(
            f"no database driver for {location.describe()} ({driver}: {exc}); install the driver package "
            "(for PostgreSQL: pip install psycopg) or use an SQLite file path"
        ) from exc
    except ArgumentError as exc:
        raise StorageError(f"cannot use the database URL {location.describe()}: {exc}") from exc


def _sqlite_code(exc: BaseException) -> str:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return str(getattr(orig, "sqlite_errorname", "") or "")


def _sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a server's error (psycopg names it ``sqlstate``, psycopg2 ``pgcode``); empty if none."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def _detail(exc: BaseException) -> str:
    """The first line of the driver's message. Never raises: a statement's error renders its parameters, and one
    nested too deeply to render would turn the explanation of a failed write into a second failure."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    try:
        text = str(orig)
    except Exception:
        cause = getattr(orig, "orig", None)
        return type(orig).__name__ + (f" ({type(cause).__name__})" if isinstance(cause, BaseException) else "")
    return text.splitlines()[0] if text else type(orig).__name__


def _writable_advice(location: Location) -> str:
    """What to make writable. SQLite gives the ``-wal`` and ``-shm`` files it creates beside a database the file's
    permissions, so a file that was read-only leaves them read-only, and writes stay refused after the file itself
    is made writable: the ones that are not writable are named, or else all of them."""
    path = location.path
    if path is not None:
        beside = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        stuck = [str(file) for file in beside if file.exists() and not os.access(file, os.W_OK)]
        if not _folder_writable(path.parent):
            stuck.append(f"the directory {path.parent}")
        if stuck:
            return f"make {' and '.join(stuck)} writable"
    return ("make the file and its directory writable, and the -wal and -shm files beside it (SQLite makes them "
            "with the file's permissions)")


def storage_error(
    exc: BaseException, location: Location, doing: str, *, busy_timeout_s: float, hint: str | None = None
) -> StorageError:
    """Turn a driver failure into a StorageError that names the database, what failed, and what to do.

    ``hint`` is the advice for failures caused by the data being written (a constraint, a value the database
    or JSON cannot hold); failures of the database itself (locked, read-only, unreachable) carry their own.
    """
    if isinstance(exc, StorageError):
        return exc
    where = location.describe()
    code = _sqlite_code(exc)
    detail = _detail(exc)
    lowered = detail.lower()
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in lowered or \
            _sqlstate(exc) == LOCK_NOT_AVAILABLE:
        return StorageError(
            f"the trace database {where} is locked: another connection held it for more than "
            f"{busy_timeout_s:g}s while {doing}. Stop the other program (or stuck ttc process) using it, wait "
            f"longer (TTC_DB_BUSY_TIMEOUT_S), or set {ENV_VAR} to another store"
        )
    if code.startswith("SQLITE_READONLY") or "readonly database" in lowered:
        return StorageError(
            f"the trace database {where} is not writable ({detail}) while {doing}; {_writable_advice(location)}, "
            f"or set {ENV_VAR} to a writable path"
        )
    if code.startswith("SQLITE_CANTOPEN") or "unable to open database" in lowered:
        return StorageError(
            f"cannot open the trace database {where} ({detail}) while {doing}; check that the path names an "
            f"existing store (a reader opens no other), or a file in an existing, writable directory, or set "
            f"{ENV_VAR} to another path"
        )
    if code.startswith("SQLITE_NOTADB") or "not a database" in lowered:
        return StorageError(
            f"{where} is not an SQLite database ({detail}); move it away or set {ENV_VAR} to another path"
        )
    if code.startswith("SQLITE_CORRUPT") or "disk image is malformed" in lowered:
        return StorageError(f"the trace database {where} is damaged ({detail}, found while {doing}); restore it "
                            f"from a copy, or set {ENV_VAR} to another file")
    if code.startswith(("SQLITE_FULL", "SQLITE_IOERR")):
        return StorageError(f"the trace database {where} failed to write ({detail}); free disk space or "
                            f"set {ENV_VAR} to a path on another disk")
    if isinstance(exc, IntegrityError | DataError | TypeError | ValueError | OverflowError) or (
        isinstance(exc, SQLAlchemyError) and not isinstance(exc, DBAPIError)
    ):
        advice = hint or "check the values being written"
        return RejectedData(f"the trace store rejected the data while {doing}: {detail}; {advice}")
    if isinstance(exc, DBAPIError) and not location.is_sqlite:
        return StorageError(
            f"the trace database {where} failed while {doing} ({detail}); check that the server is running "
            f"and that the URL (argument or {ENV_VAR}) is right"
        )
    return StorageError(f"the trace database {where} failed while {doing}: {detail}")


__all__ = [
    "CREATION_LOCK",
    "DEFAULT_BUSY_TIMEOUT_S",
    "ENV_VAR",
    "MAX_BUSY_TIMEOUT_S",
    "Location",
    "check_layout",
    "default_path",
    "lock_for_creation",
    "make_engine",
    "reads_snapshot",
    "refuse_foreign_file",
    "resolve_location",
    "storage_error",
    "ttc_tables",
]
