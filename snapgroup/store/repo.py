"""Queries over the schema. Never commits: the caller's transaction does."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete
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

    def vm_uuids(self) -> set[str]:
        return set(self.session.exec(select(VolumeRow.vm_uuid).distinct()))

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

    def delete_snapshots(self, uuids: Iterable[str]) -> None:
        ids = list(uuids)
        if ids:
            self.session.execute(delete(RefRow).where(col(RefRow.volume_snapshot_uuid).in_(ids)))
            self.session.execute(delete(SnapshotRow).where(col(SnapshotRow.uuid).in_(ids)))

    # groups
    def group(self, uuid: str) -> GroupRow | None:
        return self.session.get(GroupRow, uuid)

    def groups(self, *, vm_uuid: str | None = None) -> list[GroupRow]:
        query = select(GroupRow)
        if vm_uuid is not None:
            query = query.where(GroupRow.vm_uuid == vm_uuid)
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
        snapshots = self.snapshots_of_volume(volume.uuid)
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

    def foreign_dependents(self) -> list[tuple[str, VolumeRow]]:
        """(snapshot uuid, volume) for every volume, or live snapshot of a volume, that
        sits directly on a snapshot of ANOTHER volume: where a clone starts."""
        volumes = self.session.exec(
            select(VolumeRow, SnapshotRow)
            .join(SnapshotRow, col(SnapshotRow.uuid) == col(VolumeRow.parent_snapshot_uuid))
            .where(col(SnapshotRow.volume_uuid) != col(VolumeRow.uuid))
        )
        found = [(snap.uuid, volume) for volume, snap in volumes]
        child = aliased(SnapshotRow)
        snapshots = self.session.exec(
            select(VolumeRow, SnapshotRow)
            .join(child, col(child.volume_uuid) == col(VolumeRow.uuid))
            .join(SnapshotRow, col(SnapshotRow.uuid) == col(child.parent_uuid))
            .where(
                col(SnapshotRow.volume_uuid) != col(child.volume_uuid),
                col(child.deleted).is_(False),
            )
        )
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
