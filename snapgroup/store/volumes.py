"""Volumes: a VM's, their tops, and which host owns them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import (
    bindparam,
    delete,
    or_,
)
from sqlalchemy import select as sa_select
from sqlalchemy import update as sa_update
from sqlmodel import col, select

from snapgroup.store.base import (
    _VOLUMES,
    RepoBase,
)
from snapgroup.store.tables import GroupRow, RefRow, SnapshotRow, VolumeRow


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


class VolumeQueries(RepoBase):
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

    def volumes_named(self, vm_name: str) -> list[VolumeRow]:
        """Volumes last seen in a VM of that name (to find an undefined VM by name)."""
        query = select(VolumeRow).where(VolumeRow.vm_name == vm_name)
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

    def forget_volumes(self, uuids: Sequence[str]) -> int:
        """Drop the rows of these volumes and of all their snapshots (deleted ones too,
        and any ref naming one): a VM gone for good. The snapshot rows dropped."""
        ids = list(uuids)
        if not ids:
            return 0
        self.session.flush()  # pending changes to these rows go first
        own = select(SnapshotRow.uuid).where(col(SnapshotRow.volume_uuid).in_(ids))
        snapshots = list(self.session.exec(own))
        self.session.execute(delete(RefRow).where(col(RefRow.volume_snapshot_uuid).in_(snapshots)))
        self.session.execute(delete(SnapshotRow).where(col(SnapshotRow.volume_uuid).in_(ids)))
        self.session.execute(delete(VolumeRow).where(col(VolumeRow.uuid).in_(ids)))
        # Rows of this session that are gone now leave it (never flushed again).
        for table, keys in ((SnapshotRow, snapshots), (VolumeRow, ids)):
            for key in keys:
                row = self.session.identity_map.get(self.session.identity_key(table, key))
                if row is not None:
                    self.session.expunge(row)
        return len(snapshots)
