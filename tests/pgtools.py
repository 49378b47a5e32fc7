"""PostgreSQL for the tests: `make test` starts a server and exports its URL in
SNAPGROUP_TEST_PG_URL (lab/postgres.py). Each pytest session works in a private database
of its own, dropped at the end, so sessions side by side never meet."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ProgrammingError
from sqlmodel import SQLModel

from snapgroup.store.db import Database

PG_ENV = "SNAPGROUP_TEST_PG_URL"


def configured_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def _admin(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, isolation_level="AUTOCOMMIT")


def private_database(base_url: str) -> Iterator[str]:
    """A fresh database next to the one `base_url` names; its URL; dropped afterwards."""
    name = f"sgtest_{uuid.uuid4().hex[:12]}"
    admin = _admin(base_url)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            # Test data need not survive a crash: commits stop waiting for the disk.
            conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop(admin, name)
        admin.dispose()


def _drop(admin: Engine, name: str) -> None:
    """DROP ... WITH (FORCE), again while it is refused for a session not ours: an
    autovacuum worker that came to the fresh database (PostgreSQL 15 will not let a
    role that is not superuser terminate it; it is gone within moments)."""
    for attempt in range(20):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except ProgrammingError as exc:
            if "pg_signal_backend" not in str(exc) or attempt == 19:
                raise
            time.sleep(0.25)


def empty_all_tables(db: Database) -> None:
    """Between tests: every row deleted, children first. DELETE, not TRUNCATE: on tables
    this small it is many times faster."""
    with db.transaction() as session:
        for table in reversed(SQLModel.metadata.sorted_tables):
            session.execute(table.delete())
