"""store/driver_sql.fetch: plain parameters go to the driver's cursor, anything a type
would convert goes through SQLAlchemy, and both answer the same rows; driver errors are
the store's errors. And a page's date texts, kept across replies, follow a zone change."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import bindparam, event, select, text

from snapgroup.api import Engine
from snapgroup.domain.errors import StoreError
from snapgroup.domain.zquery import parse_query
from snapgroup.store.base import _GROUPS
from snapgroup.store.db import Database
from snapgroup.store.driver_sql import fetch
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool
from tests.unit.test_group_query import _generate

_G = _GROUPS.c
_BY_NAME = select(_G.uuid, _G.protected).where(_G.name == bindparam("name")).order_by(_G.uuid)
_SINCE = select(_G.uuid).where(_G.create_date >= bindparam("since")).order_by(_G.uuid)
_AMONG = select(_G.uuid).where(_G.uuid.in_(bindparam("uuids", expanding=True)))


def _engine_on(db: Database) -> Engine:
    images = FakeImageTool()
    return Engine(hypervisor=FakeHypervisor(images), images=images, db=db)


def test_plain_values_go_to_the_driver_others_through_sqlalchemy(store: Database) -> None:
    data = _generate(store)
    name = data["groups"][5]["name"]
    seen: list[tuple[str, bool]] = []

    def record(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        seen.append((sql, context is None))  # the driver's way has no execution context

    event.listen(store._engine, "before_cursor_execute", record)
    try:
        with store.read() as conn:
            raw = fetch(conn, _BY_NAME, {"name": name})
            since = datetime(2000, 1, 1, tzinfo=UTC)
            dated = fetch(conn, _SINCE, {"since": since})  # a date: SQLAlchemy converts it
            first = [r[0] for r in raw][:2]
            among = fetch(conn, _AMONG, {"uuids": first})  # an expanding list
            via_sqlalchemy = list(conn.execute(_BY_NAME, {"name": name}).all())
    finally:
        event.remove(store._engine, "before_cursor_execute", record)
    assert [context for _, context in seen] == [True, False, False, False]
    # the same rows; SQLite's booleans (NULL here: not recorded) as the driver gives them
    assert raw and [r[0] for r in raw] == [r[0] for r in via_sqlalchemy]
    assert [None if r[1] is None else bool(r[1]) for r in raw] == [r[1] for r in via_sqlalchemy]
    assert len(dated) == len(data["groups"])
    assert sorted(r[0] for r in among) == sorted(first)


def test_a_driver_error_is_a_store_error(tmp_path: Any) -> None:
    db = Database(f"sqlite:///{tmp_path / 's.db'}")
    with db.read() as conn:
        conn.connection.dbapi_connection.execute("DROP TABLE volume_snapshot_group_ref")  # type: ignore[union-attr]
        conn.connection.dbapi_connection.execute("DROP TABLE volume_snapshot_group")  # type: ignore[union-attr]
        with pytest.raises(StoreError, match="metadata store error"):
            fetch(conn, _BY_NAME, {"name": "x"})
    db.dispose()


def test_page_dates_follow_a_zone_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """The raw-date -> text cache outlives a reply but not a zone change."""
    engine = _engine_on(Database("sqlite://"))
    _generate(engine.db)
    query = parse_query(limit=1)

    def dates() -> tuple[str, str]:
        inv = engine.query_groups(query).reply(query)["inventories"][0]
        return inv["createDate"], inv["volumeSnapshotRefs"][0]["createDate"]

    try:
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()
        in_utc = dates()
        monkeypatch.setenv("TZ", "Asia/Tokyo")
        time.tzset()
        in_tokyo = dates()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert in_utc != in_tokyo
    group = engine.query_groups(query).groups[0]
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:  # the same texts as the Group objects' own inventory, in Tokyo
        assert in_tokyo == (
            group.to_inventory()["createDate"],
            group.to_inventory()["volumeSnapshotRefs"][0]["createDate"],
        )
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_kept_reader_sees_each_commit_and_lends_to_one_thread_at_a_time(
    tmp_path: Any,
) -> None:
    """A SQLite file's reads share one kept connection: a commit made meanwhile by
    another connection is seen by the next read (no snapshot is left open), a thread
    finding it busy reads through the pool, and an error inside leaves it usable."""
    db = Database(f"sqlite:///{tmp_path / 'store.db'}")
    writer = Database(f"sqlite:///{tmp_path / 'store.db'}")
    count = "SELECT count(*) FROM volume_snapshot_group"
    with db.read() as conn:
        assert conn.execute(text(count)).scalar() == 0
        kept = conn
    _generate(writer)
    with db.read() as conn:
        assert conn is kept and conn.execute(text(count)).scalar() == 60
        inner: list[Any] = []

        def other_thread() -> None:
            with db.read() as other:
                inner.append((other is kept, other.execute(text(count)).scalar()))

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert inner == [(False, 60)]  # the kept one was busy: a pooled one
    with pytest.raises(StoreError), db.read() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    with db.read() as conn:
        assert conn is kept and conn.execute(text(count)).scalar() == 60
    db.dispose()
    writer.dispose()
    with db.read() as conn:  # after dispose: a new kept connection
        assert conn is not kept and conn.execute(text(count)).scalar() == 60
    db.dispose()
