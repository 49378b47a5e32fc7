"""Opening a store whose schema is this code's costs one SELECT (its stamp), not the
dozen inspections that look for missing tables, columns and indexes (issue 20: every
command without the daemon opens the store); any other store is checked as before."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from snapgroup.store.db import Database, schema_fingerprint


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every SQL statement any engine runs inside the block."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def stamp_of(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        (found,) = conn.execute("SELECT fingerprint FROM schema_stamp").fetchone()
    return str(found)


def test_a_store_of_this_schema_opens_on_one_select(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    Database(f"sqlite:///{path}").dispose()
    assert stamp_of(path) == schema_fingerprint()
    with statements() as seen:
        Database(f"sqlite:///{path}").dispose()
    assert len(seen) == 1 and "schema_stamp" in seen[0]


def test_a_store_of_another_schema_is_brought_up_to_date_and_stamped(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    Database(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as conn:  # as an older snapgroup left it
        conn.execute("DROP INDEX ix_volume_parent_snapshot_uuid")
        conn.execute("UPDATE schema_stamp SET fingerprint = 'older'")
    Database(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as conn:
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(volume)")}
    assert "ix_volume_parent_snapshot_uuid" in indexes
    assert stamp_of(path) == schema_fingerprint()


def test_the_fingerprint_follows_the_declared_schema() -> None:
    from sqlmodel import SQLModel

    before = schema_fingerprint()
    table = SQLModel.metadata.tables["volume"]
    column = table.c.parent_snapshot_uuid
    column.nullable = not column.nullable
    try:
        assert schema_fingerprint() != before
    finally:
        column.nullable = not column.nullable
    assert schema_fingerprint() == before
