"""Which snapshot files other chains read: a clone's disks sit on the snapshots of the VM
it was cloned from, and a `snapgroup mount` of a group reads its snapshots, and every
file below such a snapshot is in that chain too. Those snapshots are pinned: a merge
would rewrite or remove a file the clone or the mount reads."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from snapgroup.domain.errors import OperationError, SnapgroupError
from snapgroup.infra import mounts
from snapgroup.ports import ImageTool
from snapgroup.store.repo import Repo
from snapgroup.store.tables import SnapshotRow

if TYPE_CHECKING:
    from snapgroup.ops.context import OpContext


def pinned_snapshots(
    repo: Repo, lineages: Iterable[Iterable[SnapshotRow]] | None = None
) -> dict[str, str]:
    """snapshot uuid -> why it must not be merged away. With `lineages` (Repo.lineage
    of each volume in question), only what pins their snapshots is looked up: a clone
    that reads any of them sits directly on one of them (or on a snapshot of a clone
    that does, which pins the same ones), so the answer for them is the same."""
    pinned: dict[str, str] = {}
    volumes = None if lineages is None else {s.volume_uuid for chain in lineages for s in chain}
    for snapshot_uuid, volume in repo.foreign_dependents(of_volumes=volumes):
        why = (
            f"read by VM {volume.vm_name}'s disk {volume.target} (volume {volume.uuid}, a "
            "clone: remove that VM and its disk, then `snapgroup sync`, to release it)"
        )
        _pin(repo, pinned, snapshot_uuid, why)
    for record in mounts.records():  # this host's: a mount serves from this host's files
        group = record.doc.get("group")
        if not record.alive or not isinstance(group, str):
            continue  # a backup's mount holds its backups; a dead one holds nothing
        why = (
            f"read by the mount of group {group} at {record.mountpoint} "
            f"(`snapgroup umount {record.mountpoint}` to release it)"
        )
        for _, snapshot in repo.refs_with_snapshots([group]):
            _pin(repo, pinned, snapshot.uuid, why)
    return pinned


def _pin(repo: Repo, pinned: dict[str, str], snapshot_uuid: str, why: str) -> None:
    """The snapshot and every one below it (its chain's files) pinned for `why`."""
    current: str | None = snapshot_uuid
    while current is not None and current not in pinned:
        row = repo.snapshot(current)
        if row is None:
            break
        pinned[current] = why
        current = row.parent_uuid


def check_snapshot_chain(
    images: ImageTool, snapshot: SnapshotRow, lineage: list[SnapshotRow], *, live: bool = True
) -> None:
    """A new overlay on `snapshot` trusts its chain: it must be what the metadata says.
    (`live`: read with -U, the file may be a running VM's backing file.)"""
    by_uuid = {s.uuid: s for s in lineage}
    expected = []
    current: SnapshotRow | None = snapshot
    while current is not None:
        expected.append(current.install_path)
        current = by_uuid.get(current.parent_uuid or "")
    try:
        actual = [layer.path for layer in images.chain(snapshot.install_path, shared=live)]
    except SnapgroupError as exc:
        raise OperationError(
            f"snapshot {snapshot.uuid}: its chain cannot be read", cause=exc
        ) from exc
    if actual[: len(expected)] != expected:
        raise OperationError(
            f"snapshot {snapshot.uuid}: real chain {actual} does not match the recorded "
            f"chain {expected}"
        )


def overlays_on_snapshots(ctx: OpContext, disks: Iterable[dict[str, Any]]) -> None:
    """A new overlay per disk (d["overlay"]) on its snapshot's file (d["snapshot_path"]),
    as clone and revert make them; on a failure, the ones made are removed. Each is sized
    as its snapshot, read with -U: qemu-img then does not open the snapshot, which a
    running VM may hold as a backing file, and the overlay is written in-process, not by
    a qemu-img run per disk (~20 ms each here)."""
    made: list[str] = []
    try:
        for d in disks:
            size = ctx.images.chain(d["snapshot_path"], shared=True)[0].virtual_size
            ctx.images.create_overlay(
                d["overlay"], backing=d["snapshot_path"], backing_format="qcow2", size=size
            )
            made.append(d["overlay"])
    except BaseException:
        ctx.remove_files(made)
        raise
