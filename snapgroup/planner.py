"""Pure decisions: which disks a group covers and in what order, and how a snapshot is
merged out of its chain. No I/O here.

deviceId order (documented in the README): the root volume is 0 — the disk with the
lowest <boot order>, or, when no disk has one, the first disk in target order. The other
disks follow in target order: bus prefix, then name length, then name (vda < vdz < vdaa).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from snapgroup.errors import OperationError
from snapgroup.models import DomainDisk, DomainInfo, VolumeType
from snapgroup.store.tables import SnapshotRow, VolumeRow

_TARGET = re.compile(r"^([a-z]+?d)([a-z]+)$")


def target_key(target: str) -> tuple[str, int, str]:
    match = _TARGET.match(target)
    if match is None:
        return (target, 0, "")
    prefix, suffix = match.groups()
    return (prefix, len(suffix), suffix)


@dataclass(frozen=True)
class PlannedDisk:
    disk: DomainDisk
    device_id: int | None  # None for cdroms and floppies: not volumes at all
    volume_type: VolumeType | None
    skip_reason: str | None = None
    # A writable disk we cannot snapshot: a group without it would not be the VM's
    # point in time, so create refuses unless told to skip it.
    blocks_create: bool = False

    @property
    def eligible(self) -> bool:
        return self.skip_reason is None


def _skip_reason(disk: DomainDisk) -> tuple[str | None, bool]:
    if disk.shareable:
        return "shareable disk: shared with other VMs, never part of a group", False
    if disk.readonly:
        return "read-only disk: holds no changing state", False
    if disk.source_type == "network":
        return "network disk: only local qcow2 files can be snapshotted", True
    if disk.source_type == "block":
        return "block device: only qcow2 files can be snapshotted", True
    if disk.path is None:
        return "no source file (empty drive)", False
    if disk.source_type not in ("file", "volume"):
        return f"{disk.source_type} disk: only qcow2 files can be snapshotted", True
    if disk.format != "qcow2":
        return f"format {disk.format or 'unknown'}: only qcow2 takes external overlays", True
    return None, False


def classify(info: DomainInfo) -> list[PlannedDisk]:
    """Every disk of the domain, volumes first in deviceId order, then the rest."""
    volumes = [d for d in info.disks if d.device == "disk"]
    others = [d for d in info.disks if d.device != "disk"]
    volumes.sort(key=lambda d: target_key(d.target))
    booted = [d for d in volumes if d.boot_order is not None]
    if booted:
        root = min(booted, key=lambda d: d.boot_order or 0)
        volumes.remove(root)
        volumes.insert(0, root)
    planned: list[PlannedDisk] = []
    for device_id, disk in enumerate(volumes):
        reason, blocking = _skip_reason(disk)
        kind = VolumeType.ROOT if device_id == 0 else VolumeType.DATA
        planned.append(PlannedDisk(disk, device_id, kind, reason, blocking))
    for disk in sorted(others, key=lambda d: target_key(d.target)):
        planned.append(PlannedDisk(disk, None, None, f"{disk.device}: not a volume"))
    return planned


def volume_name(vm_name: str, volume_type: VolumeType, target: str) -> str:
    prefix = "ROOT" if volume_type is VolumeType.ROOT else "DATA"
    return f"{prefix}-{vm_name}-{target}"


def snapshot_name(group_name: str, volume: str) -> str:
    """ZStack names a group's snapshots <groupName>-<volumeName>."""
    return f"{group_name}-{volume}"


def expected_chain(volume: VolumeRow, snapshots: list[SnapshotRow]) -> list[str]:
    """The files the metadata says make up the volume, top first."""
    by_uuid = {s.uuid: s for s in snapshots}
    chain = [volume.install_path]
    parent = volume.parent_snapshot_uuid
    while parent is not None:
        snap = by_uuid.get(parent)
        if snap is None:
            raise OperationError(
                f"metadata of volume {volume.uuid} names a missing parent snapshot {parent}"
            )
        chain.append(snap.install_path)
        parent = snap.parent_uuid
    return chain


class MergeKind(StrEnum):
    ACTIVE = "active"  # the snapshot's child is the volume's current top
    INTERMEDIATE = "intermediate"  # the child is a later snapshot's file


@dataclass(frozen=True)
class MergePlan:
    """Deleting snapshot S: its child's file `top` is merged down into S's file `base`,
    which then takes the child's place (the child's data lives on at S's path)."""

    kind: MergeKind
    snapshot: SnapshotRow
    top: str
    base: str
    child_snapshot: SnapshotRow | None  # the later snapshot whose file moves to `base`
    above: str | None  # the file that backs on `top` (intermediate only); re-pointed

    def needed_bytes(self, top_actual_size: int) -> int:
        return top_actual_size


def plan_merge(volume: VolumeRow, snapshots: list[SnapshotRow], target: SnapshotRow) -> MergePlan:
    children = [s for s in snapshots if s.parent_uuid == target.uuid]
    top_is_child = volume.parent_snapshot_uuid == target.uuid
    count = len(children) + (1 if top_is_child else 0)
    if count != 1:
        raise OperationError(
            f"snapshot {target.uuid} has {count} children: a merge needs exactly one"
        )
    if top_is_child:
        return MergePlan(
            MergeKind.ACTIVE, target, volume.install_path, target.install_path, None, None
        )
    child = children[0]
    grandchildren = [s for s in snapshots if s.parent_uuid == child.uuid]
    above = (
        volume.install_path
        if volume.parent_snapshot_uuid == child.uuid
        else (grandchildren[0].install_path if len(grandchildren) == 1 else None)
    )
    if above is None:
        raise OperationError(f"snapshot {child.uuid} has no single child: chain is a tree")
    return MergePlan(
        MergeKind.INTERMEDIATE, target, child.install_path, target.install_path, child, above
    )


def apply_merge(volume: VolumeRow, plan: MergePlan) -> None:
    """Metadata after the merge: the child's file now lives at the snapshot's path."""
    if plan.kind is MergeKind.ACTIVE:
        volume.install_path = plan.base
        volume.parent_snapshot_uuid = plan.snapshot.parent_uuid
        return
    assert plan.child_snapshot is not None
    plan.child_snapshot.install_path = plan.base
    plan.child_snapshot.parent_uuid = plan.snapshot.parent_uuid
