"""Rows the REST API's read-only ZStack resources are built from (VMs, volumes,
snapshots)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from snapgroup.store.tables import RefRow, SnapshotRow, VolumeRow


def all_volumes(session: Session) -> list[VolumeRow]:
    """Every recorded volume, by VM then deviceId."""
    query = select(VolumeRow).order_by(col(VolumeRow.vm_uuid), col(VolumeRow.device_id))
    return list(session.exec(query))


def live_snapshots(session: Session) -> list[tuple[SnapshotRow, VolumeRow, str | None]]:
    """Every snapshot not deleted, with its volume and its group (None: ungrouped), by
    volume then age."""
    query = (
        select(SnapshotRow, VolumeRow, RefRow.group_uuid)
        .join(VolumeRow, col(VolumeRow.uuid) == col(SnapshotRow.volume_uuid))
        .outerjoin(RefRow, col(RefRow.volume_snapshot_uuid) == col(SnapshotRow.uuid))
        .where(col(SnapshotRow.deleted).is_(False))
        .order_by(col(VolumeRow.vm_uuid), col(VolumeRow.device_id), col(SnapshotRow.create_date))
    )
    return [(s, v, g) for s, v, g in session.exec(query)]
