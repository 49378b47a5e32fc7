"""Rows the REST API's read-only ZStack resources are built from (VMs, volumes)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from snapgroup.store.tables import VolumeRow


def all_volumes(session: Session) -> list[VolumeRow]:
    """Every recorded volume, by VM then deviceId."""
    query = select(VolumeRow).order_by(col(VolumeRow.vm_uuid), col(VolumeRow.device_id))
    return list(session.exec(query))
