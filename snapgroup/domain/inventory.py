"""What the API returns, and its conversion to the seed's JSON documents.

Field names and shapes follow ZStack's VolumeSnapshotGroup API exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from snapgroup.domain.errors import BatchDeleteError, SnapgroupError


def zstack_date(moment: datetime) -> str:
    """Java's medium date format, as in the seed: "Nov 14, 2017 10:20:57 PM" (host time)."""
    local = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone()
    hour = local.hour % 12 or 12
    meridiem = "AM" if local.hour < 12 else "PM"
    month = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")[
        local.month - 1
    ]
    return f"{month} {local.day}, {local.year} {hour}:{local:%M:%S} {meridiem}"


@dataclass(frozen=True)
class GroupRef:
    volume_snapshot_uuid: str
    group_uuid: str
    device_id: int
    snapshot_deleted: bool
    volume_uuid: str
    volume_name: str
    volume_type: str
    install_path: str
    snapshot_name: str
    volume_last_attach_date: datetime
    create_date: datetime
    last_op_date: datetime
    # **ours**: why the snapshot's file no longer holds its point in time (a merge into
    # it did not complete: SnapshotRow.changed); None: intact.
    snapshot_changed: str | None = None

    def to_inventory(self) -> dict[str, Any]:
        return {
            "volumeSnapshotUuid": self.volume_snapshot_uuid,
            "volumeSnapshotGroupUuid": self.group_uuid,
            "deviceId": self.device_id,
            "snapshotDeleted": self.snapshot_deleted,
            "volumeUuid": self.volume_uuid,
            "volumeName": self.volume_name,
            "volumeType": self.volume_type,
            "volumeSnapshotInstallPath": self.install_path,
            "volumeSnapshotName": self.snapshot_name,
            "volumeLastAttachDate": zstack_date(self.volume_last_attach_date),
            "createDate": zstack_date(self.create_date),
            "lastOpDate": zstack_date(self.last_op_date),
            "snapshotStatus": "Changed" if self.snapshot_changed else "Ready",
            "statusReason": self.snapshot_changed,
        }


@dataclass(frozen=True)
class Group:
    uuid: str
    name: str
    description: str | None
    vm_uuid: str
    create_date: datetime
    last_op_date: datetime
    refs: tuple[GroupRef, ...]
    # **ours** (snapgroup.ops.consistency), beside the seed's fields; None for groups
    # recorded before snapgroup recorded them.
    consistency_type: str | None = None  # Application / Crash
    frozen_filesystems: tuple[str, ...] = ()  # the mountpoints the guest agent froze
    freeze_millis: int | None = None  # freeze request sent -> thaw answered
    consistency_note: str | None = None  # why it is not Application (or a thaw problem)
    # **ours**, snapshot policies: the policies that took it (None: made by hand), the
    # slot label it was taken for, and whether it is protected from pruning and delete.
    policy: tuple[str, ...] | None = None
    policy_label: str | None = None
    protected: bool = False

    @property
    def snapshot_count(self) -> int:
        return len(self.refs)

    def to_inventory(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "snapshotCount": self.snapshot_count,
            "name": self.name,
            "description": self.description,
            "vmInstanceUuid": self.vm_uuid,
            "createDate": zstack_date(self.create_date),
            "lastOpDate": zstack_date(self.last_op_date),
            "volumeSnapshotRefs": [ref.to_inventory() for ref in self.refs],
            "consistencyType": self.consistency_type,
            "frozenFilesystems": list(self.frozen_filesystems),
            "freezeMillis": self.freeze_millis,
            "consistencyNote": self.consistency_note,
            "policy": None if self.policy is None else list(self.policy),
            "policyLabel": self.policy_label,
            "protected": self.protected,
        }


@dataclass(frozen=True)
class DeleteResult:
    snapshot_uuid: str
    volume_uuid: str
    success: bool
    error: SnapgroupError | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshotUuid": self.snapshot_uuid,
            "volumeUuid": self.volume_uuid,
            "success": self.success,
            "error": self.error.to_dict() if self.error else None,
        }


@dataclass(frozen=True)
class DeleteReport:
    group_uuid: str
    results: tuple[DeleteResult, ...]
    # A Permissive delete that refused before changing anything: its error, and every
    # ref's result says why (deleting.DeleteRefused carries such a report).
    refusal: SnapgroupError | None = None

    @property
    def error(self) -> SnapgroupError | None:
        """**ours**: set whenever any snapshot failed (ZStack reports success regardless)."""
        if self.refusal is not None:
            return self.refusal
        failed = [r for r in self.results if not r.success]
        if not failed:
            return None
        return BatchDeleteError(
            f"{len(failed)} of {len(self.results)} snapshots of group {self.group_uuid} "
            "were not deleted",
            cause=failed[0].error,
        )

    def to_response(self) -> dict[str, Any]:
        response: dict[str, Any] = {"results": [r.to_dict() for r in self.results]}
        error = self.error
        if error is not None:
            response["error"] = error.to_dict()
        return response


@dataclass(frozen=True)
class VolumeView:
    """One disk of a VM as `snapgroup volumes` reports it."""

    target: str
    device: str
    install_path: str | None
    format: str | None
    volume_uuid: str | None = None
    device_id: int | None = None
    volume_type: str | None = None
    volume_name: str | None = None
    skipped_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "volumeUuid": self.volume_uuid,
            "volumeName": self.volume_name,
            "deviceId": self.device_id,
            "target": self.target,
            "device": self.device,
            "volumeType": self.volume_type,
            "installPath": self.install_path,
            "format": self.format,
            "skipped": self.skipped_reason is not None,
            "reason": self.skipped_reason,
        }
