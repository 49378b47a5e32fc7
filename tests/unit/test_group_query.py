"""ZStack queries run in SQL (store/group_query.py via Engine.query_groups) answer
exactly what the reference evaluation in Python (rest/query.py) answers over every
group, for every condition, sort and page, on SQLite and PostgreSQL, on a generated
store with the awkward values: NULL descriptions, mixed case, LIKE's own characters,
a backslash, non-ASCII text, equal dates, deleted snapshots, refs whose snapshot
changed after them."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from snapgroup.api import Engine
from snapgroup.domain.zquery import parse_query
from snapgroup.rest.query import ReferenceQuery
from snapgroup.store.db import Database
from snapgroup.store.group_query import (
    _count_template,
    _page_template,
    count_statement,
    page_statement,
)
from snapgroup.store.tables import GroupRow, RefRow, SnapshotRow, VolumeRow
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
NAMES = ["Alpha", "alpha", "beta", "Beta_2", "50%off", "back\\slash", "émile", "Ωmega", "z"]
VMS = [f"{v:032x}" for v in (0xA1, 0xB2, 0xC3)]


def _generate(db: Database, seed: int = 7) -> dict[str, Any]:
    """~60 groups on 3 VMs of up to 4 volumes; returns values to query for."""
    rnd = random.Random(seed)
    volumes, snapshots, groups, refs = [], [], [], []
    vol_uuids: dict[str, list[str]] = {}
    for v, vm in enumerate(VMS):
        vol_uuids[vm] = [f"{v + 1:02x}{d:030x}" for d in range(4)]
        for d, uuid in enumerate(vol_uuids[vm]):
            volumes.append(
                {
                    "uuid": uuid,
                    "vm_uuid": vm,
                    "vm_name": f"vm{v}",
                    "target": f"vd{chr(97 + d)}",
                    "device_id": d,
                    "volume_type": "Root" if d == 0 else "Data",
                    "name": f"vm{v}-vd{chr(97 + d)}",
                    "install_path": f"/p/{uuid}.qcow2",
                    "format": "qcow2",
                    "attached": True,
                    "last_attach_date": T0,
                    "create_date": T0,
                    "last_op_date": T0,
                }
            )
    n = 0
    for g in range(60):
        vm = VMS[g % 3]
        uuid = f"{g:02x}{rnd.getrandbits(120):030x}"
        created = T0 + timedelta(minutes=rnd.choice([0, 1, 1, 2, 3, 5, 8, 13]), microseconds=g % 3)
        changed = created + timedelta(seconds=rnd.randrange(0, 100))
        groups.append(
            {
                "uuid": uuid,
                "name": rnd.choice(NAMES),
                "description": rnd.choice([None, None, "first", "Second one", "x_y"]),
                "vm_uuid": vm,
                "create_date": created,
                "last_op_date": changed,
                "host": "h",
            }
        )
        for d in range(rnd.randrange(0, 5)):  # 0 refs too: snapshotCount 0
            n += 1
            snap = f"{n:032x}"
            snap_changed = created + timedelta(seconds=rnd.choice([0, 30, 200]))
            snapshots.append(
                {
                    "uuid": snap,
                    "volume_uuid": vol_uuids[vm][d],
                    "name": f"{groups[-1]['name']}-vd{chr(97 + d)}",
                    "install_path": f"/p/{snap}.qcow2",
                    "deleted": rnd.random() < 0.2,
                    "create_date": created,
                    "last_op_date": snap_changed,
                }
            )
            refs.append(
                {
                    "volume_snapshot_uuid": snap,
                    "group_uuid": uuid,
                    "device_id": d,
                    "volume_uuid": vol_uuids[vm][d],
                    "volume_name": f"vol-{d}",
                    "volume_type": "Root" if d == 0 else "Data",
                    "volume_last_attach_date": T0,
                    "create_date": created,
                    "last_op_date": created + timedelta(seconds=rnd.choice([0, 60])),
                }
            )
    with db.transaction() as session:
        for table, rows in (
            (VolumeRow.__table__, volumes),  # type: ignore[attr-defined]
            (GroupRow.__table__, groups),  # type: ignore[attr-defined]
            (SnapshotRow.__table__, snapshots),  # type: ignore[attr-defined]
            (RefRow.__table__, refs),  # type: ignore[attr-defined]
        ):
            session.execute(insert(table), rows)
    return {"groups": groups, "refs": refs, "snapshots": snapshots, "volumes": vol_uuids}


@pytest.fixture
def engine(store: Database) -> Engine:
    images = FakeImageTool()
    return Engine(hypervisor=FakeHypervisor(images), images=images, db=store)


def _conditions(data: dict[str, Any]) -> list[str]:
    g, r = data["groups"], data["refs"]
    mid = g[17]
    date = mid["create_date"]
    ms = int(date.timestamp() * 1000)
    out = []
    for op in ("=", "!=", ">", "<", ">=", "<="):
        out += [
            f"name{op}{mid['name']}",
            f"name{op}beta",
            f"uuid{op}{mid['uuid']}",
            f"description{op}first",
            f"vmInstanceUuid{op}{VMS[1]}",
            f"snapshotCount{op}2",
            f"createDate{op}{date.isoformat()}",
            f"createDate{op}{ms}",
            f"lastOpDate{op}{mid['last_op_date'].isoformat()}",
            f"volumeSnapshotRefs.deviceId{op}1",
            f"volumeSnapshotRefs.volumeUuid{op}{r[5]['volume_uuid']}",
            f"volumeSnapshotRefs.volumeName{op}vol-2",
            f"volumeSnapshotRefs.volumeType{op}Data",
            f"volumeSnapshotRefs.volumeSnapshotUuid{op}{r[9]['volume_snapshot_uuid']}",
            f"volumeSnapshotRefs.volumeSnapshotGroupUuid{op}{r[9]['group_uuid']}",
            f"volumeSnapshotRefs.volumeSnapshotInstallPath{op}/p/{r[3]['volume_snapshot_uuid']}.qcow2",
            f"volumeSnapshotRefs.volumeSnapshotName{op}beta-vda",
            f"volumeSnapshotRefs.createDate{op}{r[7]['create_date'].isoformat()}",
            f"volumeSnapshotRefs.lastOpDate{op}{(date + timedelta(seconds=30)).isoformat()}",
        ]
    for op in ("=", "!="):
        out += [f"volumeSnapshotRefs.snapshotDeleted{op}true"]
        out += [f"volumeSnapshotRefs.snapshotDeleted{op}FALSE"]
    for op in ("?=", "!?="):
        out += [
            f"name{op}beta,Alpha,z",
            f"description{op}first,x_y",
            f"snapshotCount{op}0,3",
            f"createDate{op}{date.isoformat()},{g[3]['create_date'].isoformat()}",
            f"volumeSnapshotRefs.deviceId{op}0,3",
            f"volumeSnapshotRefs.volumeUuid{op}{r[0]['volume_uuid']},{r[1]['volume_uuid']}",
            f"volumeSnapshotRefs.snapshotDeleted{op}true",
        ]
    for op in ("~=", "!~="):
        out += [
            f"name{op}a%",
            f"name{op}%A%",
            f"name{op}beta_2",  # _ is any one character
            f"name{op}%\\%",  # a backslash is itself
            f"name{op}50%",
            f"name{op}%_%",
            f"description{op}%ond%",
            f"snapshotCount{op}1%",
            f"volumeSnapshotRefs.deviceId{op}2",
            f"volumeSnapshotRefs.volumeSnapshotName{op}%VDB",
            f"volumeSnapshotRefs.volumeSnapshotInstallPath{op}/p/%1.qcow2",
        ]
    for test in ("is null", "not null"):
        out += [
            f"description {test}",
            f"name {test}",
            f"snapshotCount {test}",
            f"createDate {test}",
            f"volumeSnapshotRefs.volumeUuid {test}",
            f"volumeSnapshotRefs.snapshotDeleted {test}",
        ]
    return out


def _same(engine: Engine, **params: Any) -> dict[str, Any]:
    query = parse_query(**params)
    expected = ReferenceQuery(query).run(engine.list_groups())
    got = engine.query_groups(query).reply(query)
    assert got == expected, params
    return got


def test_every_condition_as_the_reference(engine: Engine) -> None:
    data = _generate(engine.db)
    matched = set()
    for condition in _conditions(data):
        reply = _same(engine, q=[condition], reply_with_count="true")
        matched.add(reply["total"])
    assert len(matched) > 20  # the conditions select many different sets
    assert 0 in matched and 60 in matched


def test_conditions_together_sorts_pages_counts_fields(engine: Engine) -> None:
    data = _generate(engine.db, seed=11)
    date = data["groups"][30]["create_date"].isoformat()
    for sort in ("name", "description", "snapshotCount", "createDate", "lastOpDate", "uuid"):
        for sign in ("+", "-", " "):
            for start, limit in ((0, 1000), (0, 7), (5, 10), (58, 10), (70, 5)):
                _same(engine, sort=sign + sort, start=start, limit=limit)
    _same(engine, q=["name~=%a%", f"createDate>={date}", "snapshotCount>0"], sort="-name")
    _same(engine, q=["volumeSnapshotRefs.deviceId=1", "volumeSnapshotRefs.volumeType=Data"])
    _same(engine, q=["description not null"], count="true")
    _same(engine, q=["name=nothing-like-it"], count="true", reply_with_count="true")
    _same(engine, limit=0, reply_with_count="true")
    _same(engine, fields="uuid,name", sort="-createDate", limit=5)
    _same(engine, fields="volumeSnapshotRefs,snapshotCount", limit=3, start=2)
    # Past SQL's 64-bit integers (the OpenAPI fuzz sent 2**63: an OverflowError, a 500)
    _same(engine, limit=2**63, start=2)
    _same(engine, limit=5, start=2**64)


def test_only_the_page_is_loaded(engine: Engine) -> None:
    """A page of 3 reads the refs of those 3 groups, not of the store's 60."""
    from sqlalchemy import event

    _generate(engine.db)
    statements: list[tuple[str, Any]] = []
    bind = engine.db._engine  # the test watches the statements sent

    def record(_c: Any, _cur: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        statements.append((sql, params))

    event.listen(bind, "before_cursor_execute", record)
    try:
        reply = engine.query_groups(parse_query(limit=3)).reply(parse_query(limit=3))
    finally:
        event.remove(bind, "before_cursor_execute", record)
    assert len(reply["inventories"]) == 3
    shown = {inv["uuid"] for inv in reply["inventories"]}
    refs = [r for inv in reply["inventories"] for r in inv["volumeSnapshotRefs"]]
    assert refs and {r["volumeSnapshotGroupUuid"] for r in refs} == shown
    if bind.dialect.name == "postgresql":  # one statement: one round trip
        assert len(statements) == 1
        page_sql = statements[0][0].upper()
        assert "LIMIT" in page_sql and "LEFT OUTER JOIN" in page_sql
        return
    assert len(statements) == 2  # the page's groups, then only their refs
    assert "LIMIT" in statements[0][0].upper()
    ref_params = statements[1][1]
    flat = list(ref_params.values()) if isinstance(ref_params, dict) else list(ref_params)
    assert set(v for v in flat if isinstance(v, str) and len(v) == 32) == shown


def test_a_page_and_its_refs_are_read_at_one_moment(tmp_path: Any) -> None:
    """SQLite (a file, WAL, as served): a group deleted by another connection right
    after the page's groups were read still shows every ref it had (the refs are read
    in the same read transaction), never a group with none."""
    from sqlalchemy import delete, event

    url = f"sqlite:///{tmp_path / 'store.db'}"
    images = FakeImageTool()
    engine = Engine(hypervisor=FakeHypervisor(images), images=images, db=Database(url))
    _generate(engine.db)
    other = Database(url)
    bind = engine.db._engine
    deleted: list[str] = []

    query = parse_query(limit=3)
    before = {g.uuid: len(g.refs) for g in engine.query_groups(query).groups}
    first = next(iter(before))

    def meddle(_c: Any, _cur: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if deleted or "LIMIT" not in sql.upper():
            return
        with other.transaction() as session:  # another writer, committed meanwhile
            session.execute(delete(RefRow).where(RefRow.group_uuid == first))  # type: ignore[arg-type]
            session.execute(delete(GroupRow).where(GroupRow.uuid == first))  # type: ignore[arg-type]
        deleted.append(first)

    event.listen(bind, "after_cursor_execute", meddle)
    try:
        reply = engine.query_groups(query).reply(query)
    finally:
        event.remove(bind, "after_cursor_execute", meddle)
    assert deleted and deleted[0] in before
    assert {inv["uuid"]: inv["snapshotCount"] for inv in reply["inventories"]} == before
    assert deleted[0] not in {g.uuid for g in engine.query_groups(query).groups}
    other.dispose()
    engine.db.dispose()


def test_the_index_serves_ref_matches() -> None:
    """volumeSnapshotRefs.volumeUuid= is answered through the ref volume index. SQLite
    only: its plan follows the schema, PostgreSQL's the table statistics."""
    db = Database("sqlite://")
    _generate(db)
    query = parse_query(q=["volumeSnapshotRefs.volumeUuid=" + "01" + "0" * 30])
    sql = str(
        page_statement(query, "sqlite").compile(
            dialect=db._engine.dialect, compile_kwargs={"literal_binds": True}
        )
    )
    with db._engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
    assert "ix_volume_snapshot_group_ref_volume_uuid" in plan, plan


def test_one_statement_per_shape_values_bound_each_time(engine: Engine) -> None:
    """Queries of one shape (fields, ops, sort, paged or not) share one built statement,
    and each answers with its own values and page."""
    _generate(engine.db, seed=5)
    _same(engine, q=["name=Alpha"], limit=4, start=1, reply_with_count="true")  # built here
    built = (_page_template.cache_info().misses, _count_template.cache_info().misses)
    replies = [
        _same(engine, q=[f"name={name}"], limit=limit, start=start, reply_with_count="true")
        for name, limit, start in (("beta", 3, 2), ("z", 1, 1), ("Alpha", 2, 3), ("none", 5, 9))
    ]
    assert (_page_template.cache_info().misses, _count_template.cache_info().misses) == built
    assert len({r["total"] for r in replies}) > 2  # the values were not the first query's
    assert [len(r["inventories"]) for r in replies][-1] == 0


def test_no_condition_no_where() -> None:
    """Without conditions the count is a bare count(*) (SQLite's fast count: a
    `WHERE 1 = 1` made it scan the table) and the page has no WHERE either."""
    query = parse_query(count="true")
    assert "WHERE" not in str(count_statement(query, "sqlite")).upper()
    assert "WHERE" not in str(page_statement(parse_query(limit=5), "sqlite")).upper()
    assert "WHERE" in str(count_statement(parse_query(q=["name=a"], count="true"), "sqlite"))
