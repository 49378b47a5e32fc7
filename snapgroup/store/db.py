"""The one module that opens database sessions. No engine is created at import time."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlmodel import Session as Session  # re-exported: the type of a transaction
from sqlmodel import SQLModel, create_engine

from snapgroup.domain.errors import StoreError
from snapgroup.store import host_tables, policy_tables, tables  # noqa: F401  (registers their tables)
from snapgroup.store.quick_read import DEFAULT_URL

DEFAULT_DB_DIR = Path("/var/lib/snapgroup")
DEFAULT_DB_URL = DEFAULT_URL


def default_url() -> str:
    return os.environ.get("SNAPGROUP_DB") or DEFAULT_DB_URL


def _prepare_sqlite_file(url: str) -> None:
    """The database file and its directory are private to root (0700 / 0600)."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return
    path = Path(database)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


SQLITE_CACHE_KIB = 32 * 1024  # per connection (the pool keeps a few)


def _sqlite_pragmas(busy_ms: int) -> Any:
    def connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        # WAL: a commit is one fsync of the log (~4 ms here) instead of the rollback
        # journal's several (~20 ms), and readers never wait for a writer. FULL keeps
        # every commit (each journal step) durable across a power loss, as before.
        # The -wal and -shm files get the database file's mode (0600).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        # A bigger page cache than SQLite's 2 MiB: a big store's hot pages (the group
        # index a count reads whole: ~4 MiB for 100k groups; a page's refs) stay in the
        # process instead of being read from the OS on every query (x0.7 a page, x0.1
        # a count of 100k groups). Memory grows only as pages are read.
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.close()

    return connect


def _add_missing_columns(engine: Engine) -> None:
    """create_all makes missing tables but never alters existing ones: add each new
    NULLABLE column a store made by an older snapgroup lacks (ALTER TABLE ... ADD COLUMN,
    portable SQL). Existing rows read NULL there, which the code takes as "not recorded"."""
    quote = engine.dialect.identifier_preparer.quote

    def columns(table: str) -> set[str]:
        return {c["name"] for c in inspect(engine).get_columns(table)}

    for table in SQLModel.metadata.sorted_tables:
        present = columns(table.name)
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            ddl = f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}"
            try:
                with engine.begin() as conn:
                    conn.execute(text(ddl))
            except SQLAlchemyError:
                if column.name not in columns(table.name):
                    raise
                # another process opening the store added it first


# Any constant: the key of the advisory lock that serialises schema creation.
_SCHEMA_LOCK_KEY = 0x5A9_6209


def _engine_for(url: URL, busy_ms: int) -> Engine:
    if url.get_backend_name() != "postgresql":
        return create_engine(url)
    if url.drivername == "postgresql":
        # The driver snapgroup ships is psycopg 3; SQLAlchemy's default is psycopg2.
        url = url.set(drivername="postgresql+psycopg")
    return create_engine(
        url,
        pool_pre_ping=True,  # a long-running server outlives database restarts
        # The session's zone is UTC whatever the server's (the times are UTC anyway).
        # lock_timeout is PostgreSQL's busy_timeout: how long a writer waits for rows.
        connect_args={"options": f"-c timezone=UTC -c lock_timeout={busy_ms}"},
    )


# A lock connection's TCP keepalives, both ways: the server drops the session of a host
# that vanished without closing its socket (power loss, cable) after ~idle + interval x
# count seconds (25 s), and so its advisory locks (store/locks.py).
_KEEPALIVE = {"idle": 10, "interval": 5, "count": 3}


def _lock_engine(engine: Engine) -> Engine:
    """Connections of their own, outside the pool: closing one ends its session."""
    server = " ".join(f"-c tcp_keepalives_{k}={v}" for k, v in _KEEPALIVE.items())
    client = {f"keepalives_{k}": v for k, v in _KEEPALIVE.items()}
    return create_engine(
        engine.url,
        poolclass=NullPool,
        connect_args={"options": f"-c timezone=UTC {server}", "keepalives": 1, **client},
    )


# The schema this code declares, as a fingerprint kept in the store once it is made:
# opening a store that holds it skips create_all and the search for missing columns and
# indexes (a dozen inspections, ~10-20 ms of every command's start here) for one SELECT.
# A store made by an older snapgroup has none, or another: it is checked as before.
_STAMP = Table(
    "schema_stamp",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("fingerprint", String(64), nullable=False),
)


def schema_fingerprint() -> str:
    """The tables, columns (type, nullability) and indexes this code declares."""
    parts = []
    for table in SQLModel.metadata.sorted_tables:
        parts.append(f"table {table.name}")
        parts += [f"column {c.name} {c.type!r} {c.nullable}" for c in table.columns]
        parts += sorted(f"index {i.name}" for i in table.indexes)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _stamped(engine: Engine, fingerprint: str) -> bool:
    try:
        with engine.connect() as conn:
            found = conn.execute(select(_STAMP.c.fingerprint)).scalar()
    except SQLAlchemyError:  # no stamp table: a new store, or one made before stamps
        return False
    return found == fingerprint


def _stamp(engine: Engine, fingerprint: str) -> None:
    _STAMP.metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(delete(_STAMP))
            conn.execute(insert(_STAMP).values(id=1, fingerprint=fingerprint))
    except SQLAlchemyError:
        pass  # another process opening the store stamped it at the same moment


def _create_schema(engine: Engine) -> None:
    fingerprint = schema_fingerprint()
    if _stamped(engine, fingerprint):
        return
    _make_schema(engine)
    _stamp(engine, fingerprint)


def _make_schema(engine: Engine) -> None:
    if engine.dialect.name == "postgresql":
        # Hosts sharing a store may open it at the same moment; CREATE TABLE races
        # would fail one of them. Serialised: the second finds the tables made.
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            SQLModel.metadata.create_all(conn)
    else:
        SQLModel.metadata.create_all(engine)
    _add_missing_columns(engine)
    _add_missing_indexes(engine)


def _add_missing_indexes(engine: Engine) -> None:
    """Likewise for indexes: create_all makes a new table's indexes only. One an older
    store lacks is made here."""

    def indexes(table: str) -> set[str | None]:
        return {i["name"] for i in inspect(engine).get_indexes(table)}

    for table in SQLModel.metadata.sorted_tables:
        present = indexes(table.name)
        for index in table.indexes:
            if index.name in present:
                continue
            try:
                with engine.begin() as conn:
                    index.create(conn, checkfirst=True)
            except SQLAlchemyError:
                if index.name not in indexes(table.name):
                    raise
                # another process opening the store made it first


class Database:
    def __init__(self, url: str | None = None, *, busy_timeout: float = 30.0) -> None:
        """`url`: any SQLAlchemy URL; SQLite and PostgreSQL (`postgresql://`) are tested.
        `busy_timeout`: seconds a writer waits for another process's write."""
        self.url = url or default_url()
        try:
            parsed = make_url(self.url)
            is_sqlite = parsed.get_backend_name() == "sqlite"
            if is_sqlite:
                _prepare_sqlite_file(self.url)
            self._engine: Engine = _engine_for(parsed, int(busy_timeout * 1000))
            if is_sqlite:
                event.listen(self._engine, "connect", _sqlite_pragmas(int(busy_timeout * 1000)))
            _create_schema(self._engine)
            # A SQLite file's reads share one kept connection when it is free (see read).
            in_memory = parsed.database in (None, "", ":memory:")
            self._reader_lock: threading.Lock | None = (
                threading.Lock() if is_sqlite and not in_memory else None
            )
            self._reader: Connection | None = None
            self._locker: Engine | None = None  # lock_connection's, made at first use
        except (SQLAlchemyError, OSError, ValueError, ImportError) as exc:  # ImportError: no driver
            raise StoreError(f"cannot open the metadata store {self._safe_url()}: {exc}") from exc

    def _safe_url(self) -> str:
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # an unparsable URL is shown as nothing rather than leaked
            return "<unparsable url>"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back on any error."""
        try:
            with Session(self._engine, expire_on_commit=False) as session:
                yield session
                session.commit()
        except SQLAlchemyError as exc:
            raise StoreError(f"metadata store error: {exc}") from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads outside any transaction (no BEGIN and COMMIT: two round
        trips fewer on PostgreSQL); statements that must see one moment bring their own
        (store/group_query.py). On a SQLite file, the kept reader connection when no other
        thread holds it: a pool checkout and return cost ~10 us, as much as a count's
        SQL; a thread finding it busy takes one from the pool."""
        lock = self._reader_lock
        if lock is not None and lock.acquire(blocking=False):
            try:
                if self._reader is None:
                    self._reader = self._engine.connect()
                yield self._reader
            except SQLAlchemyError as exc:
                raise StoreError(f"metadata store error: {exc}") from exc
            finally:
                lock.release()
            return
        try:
            with self._engine.connect() as conn:
                # pysqlite begins no transaction for a SELECT: SQLite needs no option
                # (setting and resetting it cost ~10 us, a third of a count's read).
                sqlite = conn.dialect.name == "sqlite"
                yield conn if sqlite else conn.execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            raise StoreError(f"metadata store error: {exc}") from exc

    @property
    def is_postgresql(self) -> bool:
        """A database server that every host of the store shares (its locks too)."""
        return self._engine.dialect.name == "postgresql"

    def lock_connection(self) -> Connection:
        """A PostgreSQL connection of its own (not the pool's) for session-level advisory
        locks (store/locks.py): the caller closes it, which ends its session and so
        releases its locks, as the death of its process or host does."""
        try:
            if self._locker is None:
                self._locker = _lock_engine(self._engine)
            return self._locker.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            raise StoreError(f"metadata store error: {exc}") from exc

    @property
    def local_reads(self) -> bool:
        """Whether a read is a file read on this host (a SQLite file, its kept reader):
        tens of microseconds, no network round trip, so an event loop may make it."""
        return self._reader_lock is not None

    def dispose(self) -> None:
        if self._reader_lock is not None:
            with self._reader_lock:
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
        self._engine.dispose()
        if self._locker is not None:
            self._locker.dispose()
