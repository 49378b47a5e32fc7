"""What the API returns, and its conversion to the seed's JSON documents.

Field names and shapes follow ZStack's VolumeSnapshotGroup API exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Re-exported: their home is documents.py (standard library only).
from snapgroup.domain.documents import group_document as group_document
from snapgroup.domain.documents import ref_document as ref_document
from snapgroup.domain.documents import zstack_date as zstack_date
from snapgroup.domain.errors import BatchDeleteError, SnapgroupError

DateText = Callable[[datetime], str]


def date_memo() -> DateText:
    """zstack_date remembered for one reply: a page's groups and refs share a few dates
    (a ref's are mostly its group's), and a lookup costs ~1/15 of a zstack_date call."""
    seen: dict[datetime, str] = {}

    def date(moment: datetime) -> str:
        text = seen.get(moment)
        if text is None:
            text = seen[moment] = zstack_date(moment)
        return text

    return date


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

    def to_inventory(self, date: DateText = zstack_date) -> dict[str, Any]:
        """`date`: a date_memo() when many refs are shown at once."""
        return ref_document(
            self.volume_snapshot_uuid,
            self.group_uuid,
            self.device_id,
            self.snapshot_deleted,
            self.volume_uuid,
            self.volume_name,
            self.volume_type,
            self.install_path,
            self.snapshot_name,
            date(self.volume_last_attach_date),
            date(self.create_date),
            date(self.last_op_date),
            self.snapshot_changed,
        )


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
    # **ours**, memory groups: the saved memory state a revert resumes (None: disk-only).
    memory: MemoryState | None = None

    @property
    def with_memory(self) -> bool:
        return self.memory is not None

    @property
    def snapshot_count(self) -> int:
        return len(self.refs)

    def to_inventory(self, date: DateText | None = None) -> dict[str, Any]:
        """`date`: shared by the groups of one reply (a date_memo() by default)."""
        date = date or date_memo()
        return group_document(
            self.uuid,
            self.name,
            self.description,
            self.vm_uuid,
            date(self.create_date),
            date(self.last_op_date),
            [ref.to_inventory(date) for ref in self.refs],
            self.consistency_type,
            list(self.frozen_filesystems),
            self.freeze_millis,
            self.consistency_note,
            None if self.policy is None else list(self.policy),
            self.policy_label,
            self.protected,
            self.memory.to_dict() if self.memory else None,
        )


@dataclass(frozen=True)
class MemoryState:
    """A memory group's saved state: the file, its size and SHA-256 when taken, and
    how it was taken (`live`: the guest ran while most of its memory was copied;
    `paused`: it was paused for the whole save)."""

    file: str
    size: int
    sha256: str
    mode: str  # live / paused

    @classmethod
    def of(
        cls, file: str | None, size: int | None, sha256: str | None, mode: str | None
    ) -> MemoryState | None:
        """From a group's columns (NULL file: a disk-only group)."""
        if file is None:
            return None
        return cls(file, size or 0, sha256 or "", mode or "paused")

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "size": self.size, "sha256": self.sha256, "mode": self.mode}


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
