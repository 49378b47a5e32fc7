"""A VM's volume snapshots, listed as objects of their own (`snapgroup snapshots`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from snapgroup.domain.inventory import zstack_date
from snapgroup.ops.context import OpContext
from snapgroup.ops.resolve import resolve_vm
from snapgroup.store.repo import Repo


@dataclass(frozen=True)
class SnapshotView:
    uuid: str
    name: str
    volume_uuid: str
    volume_name: str
    volume_type: str
    target: str
    vm_uuid: str
    parent_uuid: str | None
    install_path: str
    group_uuid: str | None
    latest: bool  # the volume's current top sits on it
    create_date: datetime
    last_op_date: datetime
    changed: str | None = None  # SnapshotRow.changed: the file no longer holds its point

    def to_inventory(self) -> dict[str, Any]:
        """ZStack's VolumeSnapshotInventory, the fields that mean something here."""
        return {
            "uuid": self.uuid,
            "name": self.name,
            "type": "Hypervisor",
            "volumeUuid": self.volume_uuid,
            "volumeType": self.volume_type,
            "parentUuid": self.parent_uuid,
            "primaryStorageInstallPath": self.install_path,
            "format": "qcow2",
            "latest": self.latest,
            "state": "Enabled",
            "status": "Changed" if self.changed else "Ready",
            "statusReason": self.changed,
            "groupUuid": self.group_uuid,
            "createDate": zstack_date(self.create_date),
            "lastOpDate": zstack_date(self.last_op_date),
        }


def list_snapshots(ctx: OpContext, vm: str) -> list[SnapshotView]:
    """Every live snapshot of every volume the VM has had, by deviceId then age."""
    vm_uuid, _domain = resolve_vm(ctx, vm)
    views = []
    with ctx.db.transaction() as session:
        repo = Repo(session)
        for volume in repo.volumes_of_vm(vm_uuid):
            snapshots = sorted(
                repo.snapshots_of_volume(volume.uuid), key=lambda s: (s.create_date, s.uuid)
            )
            for s in snapshots:
                ref = repo.ref(s.uuid)
                views.append(
                    SnapshotView(
                        uuid=s.uuid,
                        name=s.name,
                        volume_uuid=volume.uuid,
                        volume_name=volume.name,
                        volume_type=volume.volume_type,
                        target=volume.target,
                        vm_uuid=vm_uuid,
                        parent_uuid=s.parent_uuid,
                        install_path=s.install_path,
                        group_uuid=ref.group_uuid if ref else None,
                        latest=volume.parent_snapshot_uuid == s.uuid,
                        create_date=s.create_date,
                        last_op_date=s.last_op_date,
                        changed=s.changed,
                    )
                )
    return views
