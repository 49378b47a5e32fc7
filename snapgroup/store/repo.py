"""Queries over the schema. Never commits: the caller's transaction does."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Row, delete, insert, or_
from sqlalchemy import select as sa_select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from snapgroup.store.tables import GroupRow, OperationRow, RefRow, SnapshotRow, VolumeRow


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

    def vm_uuids(self, *, host: str | None = None) -> set[str]:
        """Every VM with recorded volumes; with `host`, those it owns (or no host does)."""
        query = select(VolumeRow.vm_uuid)
        if host is not None:
            query = query.where(or_(col(VolumeRow.host) == host, col(VolumeRow.host).is_(None)))
        return set(self.session.exec(query.distinct()))

    def vm_hosts(self, vm_uuid: str) -> set[str]:
        """The hosts the VM's volume and group rows name as owner (NULL: none recorded)."""
        volumes = select(VolumeRow.host).where(VolumeRow.vm_uuid == vm_uuid)
        groups = select(GroupRow.host).where(GroupRow.vm_uuid == vm_uuid)
        found = set(self.session.exec(volumes.distinct()))
        found |= set(self.session.exec(groups.distinct()))
        return {h for h in found if h is not None}

    def all_install_paths(self) -> set[str]:
        volumes = self.session.exec(select(VolumeRow.install_path))
        snapshots = self.session.exec(select(SnapshotRow.install_path))
        return set(volumes) | set(snapshots)

    # snapshots
    def snapshot(self, uuid: str) -> SnapshotRow | None:
        return self.session.get(SnapshotRow, uuid)

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

    # groups
    def group(self, uuid: str) -> GroupRow | None:
        return self.session.get(GroupRow, uuid)

    def groups_by_uuid(self, uuids: Sequence[str]) -> dict[str, GroupRow]:
        """The groups of those UUIDs that exist, in one query."""
        if not uuids:
            return {}
        if len(uuids) == 1:  # the session may hold it already (a group just recorded)
            row = self.session.get(GroupRow, uuids[0])
            return {} if row is None else {row.uuid: row}
        query = select(GroupRow).where(col(GroupRow.uuid).in_(list(uuids)))
        return {row.uuid: row for row in self.session.exec(query)}

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
        """Every ref of the given groups with its snapshot, in one query, by deviceId."""
        if not group_uuids:
            return []
        query = (
            select(RefRow, SnapshotRow)
            .join(SnapshotRow, col(SnapshotRow.uuid) == col(RefRow.volume_snapshot_uuid))
            .where(col(RefRow.group_uuid).in_(list(group_uuids)))
            .order_by(col(RefRow.group_uuid), col(RefRow.device_id))
        )
        return [(ref, snap) for ref, snap in self.session.exec(query)]

    def ref_views(self, group_uuids: Sequence[str]) -> list[Row[Any]]:
        """What a group's inventory shows of each ref and its snapshot, as plain rows (no
        ORM objects: a VM's 100 groups have 1,600 refs, and building an ORM object per
        ref and snapshot cost ~100x the query). By group, then deviceId."""
        if not group_uuids:
            return []
        refs, snapshots = RefRow.__table__, SnapshotRow.__table__  # type: ignore[attr-defined]
        ref, snap = refs.c, snapshots.c
        query = (
            sa_select(
                ref.volume_snapshot_uuid,
                ref.group_uuid,
                ref.device_id,
                ref.volume_uuid,
                ref.volume_name,
                ref.volume_type,
                ref.volume_last_attach_date,
                ref.create_date,
                ref.last_op_date,
                snap.deleted.label("snapshot_deleted"),
                snap.install_path,
                snap.name.label("snapshot_name"),
                snap.last_op_date.label("snapshot_last_op_date"),
            )
            .join_from(refs, snapshots, snap.uuid == ref.volume_snapshot_uuid)
            .where(ref.group_uuid.in_(list(group_uuids)))
            .order_by(ref.group_uuid, ref.device_id)
        )
        return list(self.session.execute(query))

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


class OperationRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, uuid: str) -> OperationRow | None:
        return self.session.get(OperationRow, uuid)

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
