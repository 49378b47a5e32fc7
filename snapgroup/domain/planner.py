"""Pure decisions: which disks a group covers and in what order, and how a snapshot is
merged out of its chain. No I/O here.

deviceId order (documented in the README): the root volume is 0 — the disk with the
lowest <boot order>, or, when no disk has one, the first disk in target order. The other
disks follow in target order: bus prefix, then name length, then name (vda < vdz < vdaa).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Generic, TypeVar

from snapgroup.domain.errors import OperationError
from snapgroup.domain.models import (
    ChainSnapshot,
    DomainDisk,
    DomainInfo,
    ImageInfo,
    SnapshotRecord,
    VolumeRecord,
    VolumeType,
)

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


def expected_chain(volume: VolumeRecord, snapshots: Iterable[ChainSnapshot]) -> list[str]:
    """The files the metadata says make up the volume, top first. `snapshots`: its
    lineage, or at least every snapshot on its current chain (Repo.chains)."""
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
    ACTIVE = "active"  # the heir is the volume's current top
    INTERMEDIATE = "intermediate"  # the heir is a later snapshot's file
    DETACH = "detach"  # no heir: every child is rebased off the snapshot, its file dropped


S = TypeVar("S", bound=SnapshotRecord)  # the caller's snapshot rows, handed back


@dataclass(frozen=True)
class MergePlan(Generic[S]):
    """Deleting snapshot S. After a revert S may have several children (a tree).

    `detach`: children rebased off S onto S's parent file (`parent`; None: standalone),
    a safe rebase that copies S's data into each. These are never on the path to the
    volume's current top, so a running QEMU never has them open.
    Then, unless the kind is DETACH, the one remaining child (the heir) has its file
    `top` committed down into S's file `base`, which takes the heir's place: the heir's
    data lives on at S's path and the files backing on the heir (`above_all`) are
    re-pointed at `base`. `above` is the one of them on the path to the current top
    (libvirt re-points it during a live commit), else the first.
    For DETACH, `top` and `base` are both S's file, removed once nothing backs on it.
    """

    kind: MergeKind
    snapshot: S
    top: str
    base: str
    child_snapshot: S | None  # the later snapshot whose file moves to `base`
    above: str | None
    above_all: tuple[str, ...] = ()
    detach: tuple[str, ...] = ()
    detached: tuple[S, ...] = ()  # the rows of the `detach` files
    parent: str | None = None
    active_chain: bool = True  # S is below the volume's current top

    def writes(self) -> list[tuple[str, str]]:
        """(file written, file whose data is copied into it): S's data into each detached
        child, then the heir's into S's file."""
        copies = [(child, self.base) for child in self.detach]
        if self.kind is not MergeKind.DETACH:
            copies.append((self.base, self.top))
        return copies


# What else qcow2 may allocate beside the data and its L2 tables and refcount blocks
# (a grown L1 or refcount table, clusters freed only once a job ends).
METADATA_SLACK = 256 << 10


def merge_room(data: int, written: ImageInfo) -> int:
    """Bytes copying `data` bytes of clusters into the image `written` may take: the data
    in whole clusters, the L2 tables mapping it (one per cluster/8 clusters, at most as
    many as the virtual size needs), the refcount blocks counting both (16-bit refcounts:
    one per cluster/2 clusters) and one cluster of refcount table, plus METADATA_SLACK."""
    cluster = max(written.cluster_size, 512)
    clusters = -(-data // cluster)
    l2 = min(clusters, -(-written.virtual_size // (cluster * (cluster // 8))))
    refcounts = -(-(clusters + l2) // (cluster // 2)) + 1
    return (clusters + l2 + refcounts + 1) * cluster + METADATA_SLACK


def _age(snapshot: SnapshotRecord) -> tuple[datetime, str]:
    return snapshot.create_date, snapshot.uuid


def _ancestors(start: str | None, by_uuid: dict[str, ChainSnapshot]) -> list[str]:
    seen: list[str] = []
    while start is not None and start in by_uuid and start not in seen:
        seen.append(start)
        start = by_uuid[start].parent_uuid
    return seen


def plan_merge(
    volume: VolumeRecord,
    snapshots: Sequence[S],
    target: S,
    *,
    pinned: dict[str, str] | None = None,
    chain: Iterable[ChainSnapshot] = (),
) -> MergePlan[S]:
    """How deleting `target` keeps every other point in time intact. `pinned`: snapshots
    whose files a clone reads (snapshot uuid -> why); those are never merged.
    `snapshots`: the volume's lineage; or, with `chain` (its Repo.chains links), only
    the rows the plan may name: the target's parent, children and grandchildren
    (Repo.merge_family)."""
    if pinned and target.uuid in pinned:
        raise OperationError(f"snapshot {target.uuid} is {pinned[target.uuid]}: never merged")
    by_uuid: dict[str, ChainSnapshot] = {s.uuid: s for s in chain}
    by_uuid.update((s.uuid, s) for s in snapshots)
    active_path = _ancestors(volume.parent_snapshot_uuid, by_uuid)
    on_active = target.uuid in active_path
    parent = by_uuid.get(target.parent_uuid or "")
    parent_path = parent.install_path if parent is not None else None
    if target.parent_uuid is not None and parent is None:
        raise OperationError(f"snapshot {target.uuid} names a missing parent snapshot")
    children = sorted((s for s in snapshots if s.parent_uuid == target.uuid), key=_age)
    if on_active and volume.parent_snapshot_uuid == target.uuid:
        # The heir is the volume's top: today's active commit.
        others = tuple(children)
        return MergePlan(
            MergeKind.ACTIVE,
            target,
            volume.install_path,
            target.install_path,
            None,
            None,
            detach=tuple(s.install_path for s in others),
            detached=others,
            parent=parent_path,
        )
    if on_active:
        heir = next(c for c in children if c.uuid in active_path)
    elif len(children) == 1:
        heir = children[0]
    else:
        # Off the current branch with 0 or several children: rebase them all away.
        return MergePlan(
            MergeKind.DETACH,
            target,
            target.install_path,
            target.install_path,
            None,
            None,
            detach=tuple(c.install_path for c in children),
            detached=tuple(children),
            parent=parent_path,
            active_chain=False,
        )
    others = tuple(c for c in children if c is not heir)
    grandchildren = sorted((s for s in snapshots if s.parent_uuid == heir.uuid), key=_age)
    above_all = [g.install_path for g in grandchildren]
    if volume.parent_snapshot_uuid == heir.uuid:
        above_all.insert(0, volume.install_path)
    elif on_active:
        on_path = next(g for g in grandchildren if g.uuid in active_path)
        above_all.remove(on_path.install_path)
        above_all.insert(0, on_path.install_path)
    return MergePlan(
        MergeKind.INTERMEDIATE,
        target,
        heir.install_path,
        target.install_path,
        heir,
        above_all[0] if above_all else None,
        above_all=tuple(above_all),
        detach=tuple(c.install_path for c in others),
        detached=others,
        parent=parent_path,
        active_chain=on_active,
    )


def apply_merge(volume: VolumeRecord, plan: MergePlan[S]) -> None:
    """Metadata after the merge: detached children sit on S's parent; the heir's file
    now lives at the snapshot's path."""
    for row in plan.detached:
        row.parent_uuid = plan.snapshot.parent_uuid
    if plan.kind is MergeKind.ACTIVE:
        volume.install_path = plan.base
        volume.parent_snapshot_uuid = plan.snapshot.parent_uuid
    elif plan.kind is MergeKind.INTERMEDIATE:
        assert plan.child_snapshot is not None
        plan.child_snapshot.install_path = plan.base
        plan.child_snapshot.parent_uuid = plan.snapshot.parent_uuid
