"""Snapshots and the chains they make: lineages, a volume's current chain, what a
merge touches, what other VMs' disks read."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

from sqlalchemy import (
    Select,
    delete,
    insert,
    union,
)
from sqlalchemy import select as sa_select
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from snapgroup.domain.models import ChainSnapshot
from snapgroup.store.base import (
    _SNAPSHOTS,
    RepoBase,
)
from snapgroup.store.tables import RefRow, SnapshotRow, VolumeRow


class ChainLink(ChainSnapshot, Protocol):
    """One snapshot of a volume's current chain (Repo.chains): a result row, its
    columns read by name (a tuple built per row cost more than the query's rows)."""

    @property
    def volume_uuid(self) -> str: ...


class SnapshotQueries(RepoBase):
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

    def delete_snapshots(self, uuids: Iterable[str]) -> None:
        ids = list(uuids)
        if ids:
            self.session.execute(delete(RefRow).where(col(RefRow.volume_snapshot_uuid).in_(ids)))
            self.session.execute(delete(SnapshotRow).where(col(SnapshotRow.uuid).in_(ids)))

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
