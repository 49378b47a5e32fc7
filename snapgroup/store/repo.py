"""Queries over the schema. Never commits: the caller's transaction does."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol, cast

from sqlalchemy import (
    ColumnElement,
    Dialect,
    Select,
    Table,
    Update,
    bindparam,
    delete,
    insert,
    or_,
    true,
    type_coerce,
    union,
)
from sqlalchemy import select as sa_select
from sqlalchemy import update as sa_update
from sqlalchemy.orm import aliased
from sqlalchemy.sql.sqltypes import NullType
from sqlmodel import Session, SQLModel, col, select

from snapgroup.domain.models import ChainSnapshot
from snapgroup.store.tables import GroupRow, OperationRow, RefRow, SnapshotRow, VolumeRow

_GROUPS: Table = GroupRow.__table__  # type: ignore[attr-defined]
_VOLUMES: Table = VolumeRow.__table__  # type: ignore[attr-defined]
_REFS: Table = RefRow.__table__  # type: ignore[attr-defined]
_SNAPSHOTS: Table = SnapshotRow.__table__  # type: ignore[attr-defined]
_OPERATIONS: Table = OperationRow.__table__  # type: ignore[attr-defined]

# Repo.group_views' columns, in order (the dates raw: see DateParser).
GROUP_VIEW_COLUMNS = (
    "uuid",
    "name",
    "description",
    "vm_uuid",
    "create_date",
    "last_op_date",
    "consistency_type",
    "frozen_filesystems",
    "freeze_millis",
    "consistency_note",
)
_DATES = frozenset({"create_date", "last_op_date"})


def _raw(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A date column as the driver returns it (SQLite: text), for a DateParser."""
    return type_coerce(column, NullType())


class DateParser:
    """Converts raw date values (_raw) as their column type would, once per distinct
    value: a VM's 1,600 refs hold ~100 distinct dates, and converting all 6,400 (a
    regex parse each on SQLite) cost more than the query. Every date column of the
    schema has the same type. One per query result: nothing is kept across calls."""

    def __init__(self, dialect: Dialect) -> None:
        kind = _GROUPS.c.create_date.type
        self._convert = kind.dialect_impl(dialect).result_processor(dialect, None)
        self._seen: dict[Any, datetime] = {}

    def __call__(self, raw: Any) -> datetime:
        try:
            return self._seen[raw]
        except KeyError:
            value = raw if self._convert is None else self._convert(raw)
            assert isinstance(value, datetime)  # the date columns read are NOT NULL
            self._seen[raw] = value
            return value


class ChainLink(ChainSnapshot, Protocol):
    """One snapshot of a volume's current chain (Repo.chains): a result row, its
    columns read by name (a tuple built per row cost more than the query's rows)."""

    @property
    def volume_uuid(self) -> str: ...


class VolumeTop(NamedTuple):
    """What recording a new group reads of each volume (Repo.volume_tops)."""

    uuid: str
    name: str
    device_id: int
    volume_type: str
    last_attach_date: datetime
    parent_snapshot_uuid: str | None


class VolumeMove(NamedTuple):
    """A volume's top moved onto a new file, above its new snapshot (Repo.move_tops)."""

    uuid: str
    install_path: str
    parent_snapshot_uuid: str
    last_op_date: datetime


def _group_filter(uuids: Sequence[str] | None, vm_uuid: str | None) -> ColumnElement[bool]:
    g = _GROUPS.c
    if uuids is not None:
        return g.uuid.in_(list(uuids))
    return true() if vm_uuid is None else g.vm_uuid == vm_uuid


class Repo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, *rows: VolumeRow | SnapshotRow | GroupRow | RefRow) -> None:
        self.session.add_all(rows)
        self.session.flush()

    # volumes
    def volume(self, uuid: str) -> VolumeRow | None:
        return self.session.get(VolumeRow, uuid)

    def volumes_of_vm(self, vm_uuid: str, *, attached_only: bool = False) -> list[VolumeRow]:
        query = select(VolumeRow).where(VolumeRow.vm_uuid == vm_uuid)
        if attached_only:
            query = query.where(col(VolumeRow.attached).is_(True))
        return list(self.session.exec(query.order_by(col(VolumeRow.device_id))))

    def volume_tops(self, uuids: Iterable[str]) -> dict[str, VolumeTop]:
        """The volumes of those UUIDs that exist, by UUID, as plain rows: one query."""
        v = _VOLUMES.c
        query = sa_select(*(v[n] for n in VolumeTop._fields)).where(v.uuid.in_(list(uuids)))
        return {row[0]: VolumeTop(*row) for row in self._rows(query)}

    def move_tops(self, moves: Sequence[VolumeMove]) -> None:
        """Each volume onto its new top: one UPDATE by primary key for all (executemany).
        Volumes loaded into this session are refreshed on their next use."""
        if not moves:
            return
        v = _VOLUMES.c
        query = (
            sa_update(_VOLUMES)
            .where(v.uuid == bindparam("b_uuid"))
            .values(
                install_path=bindparam("b_install_path"),
                parent_snapshot_uuid=bindparam("b_parent_snapshot_uuid"),
                last_op_date=bindparam("b_last_op_date"),
            )
        )
        self.session.execute(query, [{f"b_{k}": x for k, x in m._asdict().items()} for m in moves])
        self._expire(VolumeRow, [m.uuid for m in moves])

    def _hold(self, rows: Iterable[SQLModel | None]) -> None:
        """Keeps rows loaded alongside others for the session's life: its identity map
        holds them weakly, so a later session.get would otherwise query again."""
        self.session.info.setdefault("held", []).extend(r for r in rows if r is not None)

    def _expire(self, table: type[SQLModel], keys: Iterable[str]) -> None:
        """Rows of this session written around the ORM are read again on next use."""
        for key in keys:
            row = self.session.identity_map.get(self.session.identity_key(table, key))
            if row is not None:
                self.session.expire(row)

    def vm_uuids(self, *, host: str | None = None) -> set[str]:
        """Every VM with recorded volumes; with `host`, those it owns (or no host does)."""
        query = select(VolumeRow.vm_uuid)
        if host is not None:
            query = query.where(or_(col(VolumeRow.host) == host, col(VolumeRow.host).is_(None)))
        return set(self.session.exec(query.distinct()))

    def vm_hosts(self, vm_uuid: str) -> set[str]:
        """The hosts the VM's volume and group rows name as owner (NULL: none recorded)."""
        volumes = select(VolumeRow.host).where(VolumeRow.vm_uuid == vm_uuid)
        found = set(self.session.exec(volumes.distinct()))
        return {h for h in found if h is not None} | self.group_hosts(vm_uuid)

    def group_hosts(self, vm_uuid: str) -> set[str]:
        """The hosts the VM's group rows name as owner."""
        groups = select(GroupRow.host).where(GroupRow.vm_uuid == vm_uuid)
        return {h for h in self.session.exec(groups.distinct()) if h is not None}

    def all_install_paths(self) -> set[str]:
        volumes = self.session.exec(select(VolumeRow.install_path))
        snapshots = self.session.exec(select(SnapshotRow.install_path))
        return set(volumes) | set(snapshots)

    # snapshots
    def snapshot(self, uuid: str) -> SnapshotRow | None:
        return self.session.get(SnapshotRow, uuid)

    def snapshots_with_volumes(self, uuids: Iterable[str]) -> list[SnapshotRow]:
        """The snapshots of those UUIDs that exist, their volumes loaded into the session
        by the same query (repo.volume then costs no query): one query, not one each."""
        query = (
            select(SnapshotRow, VolumeRow)
            .outerjoin(VolumeRow, col(VolumeRow.uuid) == col(SnapshotRow.volume_uuid))
            .where(col(SnapshotRow.uuid).in_(list(uuids)))
        )
        rows = list(self.session.exec(query))
        self._hold(volume for _snap, volume in rows)
        return [snapshot for snapshot, _volume in rows]

    def merge_family(self, targets: Sequence[SnapshotRow]) -> dict[str, list[SnapshotRow]]:
        """What plan_merge may name of each target's lineage besides its chain (Repo.chains),
        by target UUID: its live parent, and its live children and theirs, of its own
        volume (a lineage holds no other volume's children). One query for all targets,
        instead of their whole lineages."""
        if not targets:
            return {}
        # Aliases only: the outer query is on the table itself, which would correlate.
        t, c, g = (_SNAPSHOTS.alias(n).c for n in ("t", "c", "g"))
        ids = [x.uuid for x in targets]
        # Linked by parent_uuid alone, each step through its index; volumes are matched
        # below (a volume condition here made SQLite walk the volume's every snapshot).
        children = sa_select(c.uuid).where(c.parent_uuid.in_(ids))
        grandchildren = sa_select(g.uuid).where(
            g.parent_uuid == c.uuid, c.parent_uuid.in_(ids), c.deleted.is_(False)
        )
        parents = sa_select(t.parent_uuid).where(t.uuid.in_(ids))
        family = union(children, grandchildren, parents)  # one IN: each looked up by key
        query = select(SnapshotRow).where(
            col(SnapshotRow.deleted).is_(False), col(SnapshotRow.uuid).in_(family)
        )
        rows = list(self.session.exec(query))
        below: dict[str | None, list[SnapshotRow]] = {}
        for row in rows:
            below.setdefault(row.parent_uuid, []).append(row)
        by_uuid = {row.uuid: row for row in rows}
        return {x.uuid: _family(x, below, by_uuid.get(x.parent_uuid or "")) for x in targets}

    def snapshots_of_volume(self, volume_uuid: str) -> list[SnapshotRow]:
        """Live (not deleted) snapshots of one volume."""
        query = select(SnapshotRow).where(
            SnapshotRow.volume_uuid == volume_uuid, col(SnapshotRow.deleted).is_(False)
        )
        return list(self.session.exec(query))

    def insert_snapshots(
        self, snapshots: Sequence[dict[str, Any]], refs: Sequence[dict[str, Any]] = ()
    ) -> None:
        """New snapshot rows, then the group refs that name them, as column values: one
        INSERT per table for a group of any size, without an ORM object per row."""
        if snapshots:
            self.session.execute(insert(SnapshotRow.__table__), list(snapshots))  # type: ignore[attr-defined]
        if refs:
            self.session.execute(insert(RefRow.__table__), list(refs))  # type: ignore[attr-defined]

    def insert_group(self, values: dict[str, Any]) -> None:
        """A new group's row, every column given: one INSERT, no ORM object."""
        self.session.execute(insert(_GROUPS), [values])

    def delete_snapshots(self, uuids: Iterable[str]) -> None:
        ids = list(uuids)
        if ids:
            self.session.execute(delete(RefRow).where(col(RefRow.volume_snapshot_uuid).in_(ids)))
            self.session.execute(delete(SnapshotRow).where(col(SnapshotRow.uuid).in_(ids)))

    # groups
    def group(self, uuid: str) -> GroupRow | None:
        return self.session.get(GroupRow, uuid)

    def has_group(self, uuid: str) -> bool:
        query = sa_select(_GROUPS.c.uuid).where(_GROUPS.c.uuid == uuid)
        return self.session.execute(query).first() is not None

    def groups(self, *, vm_uuid: str | None = None, host: str | None = None) -> list[GroupRow]:
        query = select(GroupRow)
        if vm_uuid is not None:
            query = query.where(GroupRow.vm_uuid == vm_uuid)
        if host is not None:  # that host's groups, and those of no recorded host
            query = query.where(or_(col(GroupRow.host) == host, col(GroupRow.host).is_(None)))
        return list(
            self.session.exec(query.order_by(col(GroupRow.create_date), col(GroupRow.uuid)))
        )

    def refs_with_snapshots(self, group_uuids: Sequence[str]) -> list[tuple[RefRow, SnapshotRow]]:
        """Every ref of the given groups with its snapshot, in one query, by deviceId.
        The snapshots' volumes are loaded into the session by the same query: the callers
        look each one up (repo.volume), which then costs no query per ref."""
        if not group_uuids:
            return []
        query = (
            select(RefRow, SnapshotRow, VolumeRow)
            .join(SnapshotRow, col(SnapshotRow.uuid) == col(RefRow.volume_snapshot_uuid))
            .outerjoin(VolumeRow, col(VolumeRow.uuid) == col(SnapshotRow.volume_uuid))
            .where(col(RefRow.group_uuid).in_(list(group_uuids)))
            .order_by(col(RefRow.group_uuid), col(RefRow.device_id))
        )
        rows = list(self.session.exec(query))
        self._hold(volume for _ref, _snap, volume in rows)
        return [(ref, snap) for ref, snap, _volume in rows]

    def group_views(
        self, *, uuids: Sequence[str] | None = None, vm_uuid: str | None = None
    ) -> list[Sequence[Any]]:
        """Groups as plain rows (no ORM object each): those of `uuids` that exist, else
        the VM's (every group when `vm_uuid` is None too), oldest first. Columns as in
        GROUP_VIEW_COLUMNS, the dates converted by a DateParser."""
        g = _GROUPS.c
        columns = [_raw(g[n]) if n in _DATES else g[n] for n in GROUP_VIEW_COLUMNS]
        query = sa_select(*columns).where(_group_filter(uuids, vm_uuid))
        return self._rows(query.order_by(g.create_date, g.uuid))

    def ref_views(
        self, *, uuids: Sequence[str] | None = None, vm_uuid: str | None = None
    ) -> list[Sequence[Any]]:
        """What a group's inventory shows of each ref and its snapshot, for the groups
        group_views selects with the same arguments, as plain rows in REF_VIEW_COLUMNS
        (an ORM object per ref and snapshot cost ~100x the query for a VM's 1,600
        refs). By group, then deviceId."""
        r, s = _REFS.c, _SNAPSHOTS.c
        query = sa_select(
            r.volume_snapshot_uuid,
            r.group_uuid,
            r.device_id,
            r.volume_uuid,
            r.volume_name,
            r.volume_type,
            _raw(r.volume_last_attach_date),
            _raw(r.create_date),
            _raw(r.last_op_date),
            s.deleted,
            s.install_path,
            s.name,
            _raw(s.last_op_date),
            s.changed,
        ).join_from(_REFS, _SNAPSHOTS, s.uuid == r.volume_snapshot_uuid)
        if uuids is not None:
            query = query.where(r.group_uuid.in_(list(uuids)))
        elif vm_uuid is not None:  # through the groups' vm_uuid index: no list of UUIDs
            g = _GROUPS.c
            query = query.join_from(_REFS, _GROUPS, g.uuid == r.group_uuid)
            query = query.where(g.vm_uuid == vm_uuid)
        return self._rows(query.order_by(r.group_uuid, r.device_id))

    def date_parser(self) -> DateParser:
        return DateParser(self.session.get_bind().dialect)

    def _rows(self, query: Select[Any]) -> list[Sequence[Any]]:
        """A column-only query's rows. Flushes first, as an ORM query would (autoflush):
        the caller's transaction may have pending changes to these tables."""
        self.session.flush()
        return list(self.session.execute(query).all())

    def delete_group(self, uuid: str) -> None:
        self.session.execute(delete(RefRow).where(col(RefRow.group_uuid) == uuid))
        self.session.execute(delete(GroupRow).where(col(GroupRow.uuid) == uuid))

    # trees, single snapshots and clones
    def ref(self, snapshot_uuid: str) -> RefRow | None:
        """The group ref of a snapshot, if it belongs to a group."""
        return self.session.get(RefRow, snapshot_uuid)

    def volumes_named(self, vm_name: str) -> list[VolumeRow]:
        """Volumes last seen in a VM of that name (to find an undefined VM by name)."""
        query = select(VolumeRow).where(VolumeRow.vm_name == vm_name)
        return list(self.session.exec(query.order_by(col(VolumeRow.device_id))))

    def lineage(self, volume: VolumeRow) -> list[SnapshotRow]:
        """The volume's live snapshots, plus the snapshots of other volumes its chain sits
        on (a clone's disks sit on the snapshots of the VM it was cloned from)."""
        return self._walk(volume, self.snapshots_of_volume(volume.uuid))

    def lineages(self, volumes: Sequence[VolumeRow]) -> dict[str, list[SnapshotRow]]:
        """lineage() of each volume, by volume UUID, with ONE query for all their own
        snapshots (a query per volume cost more than the rows: 16 disks, 16 queries)."""
        own: dict[str, list[SnapshotRow]] = {v.uuid: [] for v in volumes}
        if own:
            query = select(SnapshotRow).where(
                col(SnapshotRow.volume_uuid).in_(list(own)), col(SnapshotRow.deleted).is_(False)
            )
            for row in self.session.exec(query):
                own[row.volume_uuid].append(row)
        return {v.uuid: self._walk(v, own[v.uuid]) for v in volumes}

    def _walk(self, volume: VolumeRow, snapshots: list[SnapshotRow]) -> list[SnapshotRow]:
        """Adds the snapshots of other volumes the chain sits on to `snapshots`."""
        known = {s.uuid for s in snapshots}
        wanted = [volume.parent_snapshot_uuid, *(s.parent_uuid for s in snapshots)]
        while wanted:
            uuid = wanted.pop()
            if uuid is None or uuid in known:
                continue
            row = self.snapshot(uuid)
            if row is None or row.deleted:
                continue
            known.add(uuid)
            snapshots.append(row)
            wanted.append(row.parent_uuid)
        return snapshots

    def chains(self, volumes: Sequence[VolumeRow]) -> dict[str, list[ChainLink]]:
        """What expected_chain needs of each volume's lineage, by volume UUID: every live
        snapshot on its current chain, as column-only links (an ORM object per snapshot
        cost most of a create's chain checks: 16 disks x 100). The volumes' own live
        snapshots come from one indexed query (a recursive query walking 1,600 parent
        links took 5x longer on SQLite); where a chain goes on into another volume's
        snapshots (a clone's disk), one recursive query follows it. A walk stops at a
        deleted or missing snapshot, as lineage() holds neither: expected_chain then
        names the missing parent."""
        if not volumes:
            return {}
        s = _SNAPSHOTS.c
        query = sa_select(s.volume_uuid, s.uuid, s.install_path, s.parent_uuid).where(
            s.volume_uuid.in_([v.uuid for v in volumes]), s.deleted.is_(False)
        )
        own: dict[str, dict[str, ChainLink]] = {v.uuid: {} for v in volumes}
        for row in self._rows(query):
            own[row[0]][row[1]] = cast(ChainLink, row)
        exits = {v.uuid: _chain_exit(v.parent_snapshot_uuid, own[v.uuid]) for v in volumes}
        beyond = self._chains_from({e for e in exits.values() if e is not None})
        return {
            v.uuid: [*own[v.uuid].values(), *beyond.get(exits[v.uuid] or "", ())] for v in volumes
        }

    def _chains_from(self, starts: set[str]) -> dict[str, list[ChainLink]]:
        """start -> the live snapshots reached from it by parent links, itself included:
        one recursive query for all. UNION (not UNION ALL) ends a walk that comes back
        to a row it already has."""
        links: dict[str, list[ChainLink]] = {start: [] for start in starts}
        if starts:
            for row in self._rows(_chain_query(starts)):
                links[row[0]].append(cast(ChainLink, row))
        return links

    def foreign_dependents(
        self, *, of_volumes: Iterable[str] | None = None
    ) -> list[tuple[str, VolumeRow]]:
        """(snapshot uuid, volume) for every volume, or live snapshot of a volume, that
        sits directly on a snapshot of ANOTHER volume: where a clone starts. With
        `of_volumes`, only those sitting on snapshots of these volumes (through the
        indexes, instead of a scan of every snapshot in the store)."""
        on_volumes = None if of_volumes is None else list(of_volumes)
        query = (
            select(VolumeRow, SnapshotRow)
            .join(SnapshotRow, col(SnapshotRow.uuid) == col(VolumeRow.parent_snapshot_uuid))
            .where(col(SnapshotRow.volume_uuid) != col(VolumeRow.uuid))
        )
        if on_volumes is not None:
            query = query.where(col(SnapshotRow.volume_uuid).in_(on_volumes))
        found = [(snap.uuid, volume) for volume, snap in self.session.exec(query)]
        child = aliased(SnapshotRow)
        query = (
            select(VolumeRow, SnapshotRow)
            .join(child, col(child.volume_uuid) == col(VolumeRow.uuid))
            .join(SnapshotRow, col(SnapshotRow.uuid) == col(child.parent_uuid))
            .where(
                col(SnapshotRow.volume_uuid) != col(child.volume_uuid),
                col(child.deleted).is_(False),
            )
        )
        if on_volumes is not None:
            query = query.where(col(SnapshotRow.volume_uuid).in_(on_volumes))
        snapshots = self.session.exec(query)
        found.extend((snap.uuid, volume) for volume, snap in snapshots)
        return found


def _family(
    target: SnapshotRow, below: dict[str | None, list[SnapshotRow]], parent: SnapshotRow | None
) -> list[SnapshotRow]:
    """The target's parent, children and grandchildren among `below` (rows by parent
    UUID), those two generations of the target's own volume only."""

    def kids(uuid: str) -> list[SnapshotRow]:
        return [r for r in below.get(uuid, ()) if r.volume_uuid == target.volume_uuid]

    children = kids(target.uuid)
    grandchildren = [g for c in children for g in kids(c.uuid)]
    return [*([parent] if parent is not None else []), *children, *grandchildren]


def _chain_exit(start: str | None, own: dict[str, ChainLink]) -> str | None:
    """Where a chain starting at `start` leaves `own` (the volume's live snapshots): the
    first parent link not among them, None when the chain ends there."""
    # More steps than links: a cycle (counted, as a set of the links seen cost more).
    for _ in range(len(own) + 1):
        link = own.get(start) if start is not None else None
        if link is None:
            return start
        start = link.parent_uuid
    return None


def _chain_query(starts: Iterable[str]) -> Select[Any]:
    """(start, uuid, install_path, parent_uuid, volume_uuid) of every live snapshot
    reached from each start by parent links, the start included."""
    s = _SNAPSHOTS.c
    live = s.deleted.is_(False)
    columns = (s.uuid, s.install_path, s.parent_uuid, s.volume_uuid)
    first = sa_select(s.uuid.label("start"), *columns)
    chain = first.where(s.uuid.in_(list(starts)), live).cte("chain", recursive=True)
    below = sa_select(chain.c.start, *columns)
    below = below.join_from(chain, _SNAPSHOTS, s.uuid == chain.c.parent_uuid).where(live)
    chain = chain.union(below)
    return sa_select(chain)


@functools.cache
def _operation_update(columns: frozenset[str]) -> Update:
    """UPDATE of those columns of one operation, built once per set of columns."""
    o = _OPERATIONS.c
    values: dict[str, Any] = {k: bindparam(f"b_{k}") for k in sorted(columns)}
    return sa_update(_OPERATIONS).where(o.uuid == bindparam("b_uuid")).values(values)


class OperationRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, uuid: str) -> OperationRow | None:
        return self.session.get(OperationRow, uuid)

    def plan(self, uuid: str) -> str | None:
        """The operation's plan (JSON) alone, without an ORM object."""
        query = sa_select(_OPERATIONS.c.plan).where(_OPERATIONS.c.uuid == uuid)
        found: str | None = self.session.execute(query).scalar()
        return found

    def update(self, uuid: str, values: dict[str, Any]) -> None:
        """Sets columns of one operation by primary key: one UPDATE, no read first.
        A row of this session's identity map is refreshed on its next use."""
        query = _operation_update(frozenset(values))
        params = {"b_uuid": uuid, **{f"b_{k}": v for k, v in values.items()}}
        # On the session's connection: Core alone, not the ORM's bulk-update path (which
        # cost more than the UPDATE, for a journal step each).
        result = self.session.connection().execute(query, params)
        assert result.rowcount == 1, f"operation {uuid} is not in the journal"
        Repo(self.session)._expire(OperationRow, [uuid])

    def unfinished(self, *, host: str) -> list[OperationRow]:
        query = select(OperationRow).where(
            OperationRow.state == "running", OperationRow.host == host
        )
        return list(self.session.exec(query.order_by(col(OperationRow.started))))

    def recent(self, *, limit: int = 100, vm_uuid: str | None = None) -> list[OperationRow]:
        query = select(OperationRow)
        if vm_uuid is not None:
            query = query.where(OperationRow.vm_uuid == vm_uuid)
        query = query.order_by(col(OperationRow.started).desc()).limit(limit)
        return list(self.session.exec(query))
