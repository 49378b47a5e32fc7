"""The one module that opens database sessions. No engine is created at import time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, SQLModel, create_engine

from snapgroup.errors import StoreError
from snapgroup.store import tables  # noqa: F401  (registers the tables on SQLModel.metadata)

DEFAULT_DB_DIR = Path("/var/lib/snapgroup")
DEFAULT_DB_URL = f"sqlite:///{DEFAULT_DB_DIR / 'snapgroup.db'}"


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


def _sqlite_pragmas(busy_ms: int) -> Any:
    def connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cursor.close()

    return connect


class Database:
    def __init__(self, url: str | None = None, *, busy_timeout: float = 30.0) -> None:
        """`busy_timeout`: seconds a SQLite writer waits for another process's write."""
        self.url = url or default_url()
        try:
            is_sqlite = make_url(self.url).get_backend_name() == "sqlite"
            if is_sqlite:
                _prepare_sqlite_file(self.url)
            self._engine: Engine = create_engine(self.url)
            if is_sqlite:
                event.listen(self._engine, "connect", _sqlite_pragmas(int(busy_timeout * 1000)))
            SQLModel.metadata.create_all(self._engine)
        except (SQLAlchemyError, OSError, ValueError) as exc:
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

    def dispose(self) -> None:
        self._engine.dispose()
