"""`snapgroup mount`: one filesystem of a group or a backup exposed read-only at a
directory (FUSE, served by the appliance: ports.GuestFiles.mount) until `snapgroup
umount`. The mount outlives the command, and so do its holds (ops/mount_holds.py):
while it lives, the group cannot be deleted, nor any backup it reads pruned. The
source's lock is held while the mount is set up and its holds recorded, so no delete
or prune is half-way through those files meanwhile."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from snapgroup.domain.errors import InvalidArgument
from snapgroup.infra import mounts
from snapgroup.ops import mount_holds
from snapgroup.ops.backing_up import open_store
from snapgroup.ops.context import OpContext
from snapgroup.ops.guest_sources import FilesSource, choose, named_device, only_disk, resolve
from snapgroup.ports import GuestFiles


@dataclass(frozen=True)
class Mounted:
    source: dict[str, Any]
    filesystem: str
    mountpoint: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "filesystem": self.filesystem, "mountpoint": self.mountpoint}


def mount(
    ctx: OpContext,
    guest: GuestFiles,
    source: FilesSource,
    *,
    mountpoint: str,
    disk: str | None = None,
    fs: str | None = None,
) -> Mounted:
    """Without `fs`, the filesystems are listed first (one appliance more) to find the
    only mountable one."""
    point = os.path.abspath(mountpoint)
    if not os.path.isdir(point):
        raise InvalidArgument(f"mountpoint {point} is not a directory")
    opened = resolve(ctx, source)
    only_disk(opened.disks, disk)
    holder = ctx.new_uuid()
    with opened.lock:
        device = named_device(opened.disks, disk, fs)
        if device is None:
            with guest.open(opened.disks) as session:
                chosen = choose(session.filesystems(), disk=disk, name=fs)
            device, fs = chosen.device, chosen.name
        doc = _doc(ctx, opened.describe, point)
        # The serving process inherits the record's lock: the mount's life is the lock's.
        with mounts.recorded(holder, doc) as lock_fd:
            try:
                _hold_backups(ctx, holder, doc)
                guest.mount(opened.disks, device, point, keep_fd=lock_fd)
            except BaseException:
                mount_holds.release(ctx, mounts.MountRecord(holder, doc, alive=False))
                raise
    return Mounted(opened.describe, fs or "", point)


def _doc(ctx: OpContext, source: dict[str, Any], point: str) -> dict[str, object]:
    if "groupUuid" in source:
        return mount_holds.group_doc(source["groupUuid"], point)
    store = open_store(ctx, source["repository"])
    manifest = store.get(source["backupId"], vm_uuid=source["vmInstanceUuid"])
    members = sorted({m for d in manifest.disks for m in d.chain})
    return mount_holds.backup_doc(store.root, manifest.vm_uuid, members, point)


def _hold_backups(ctx: OpContext, holder: str, doc: dict[str, object]) -> None:
    """A backup's mount holds every backup its chain reads (a prune merges the oldest
    into the next: either one's files change)."""
    repo, vm, members = doc.get("repo"), doc.get("vm"), doc.get("backups")
    if not (isinstance(repo, str) and isinstance(vm, str) and isinstance(members, list)):
        return
    store = open_store(ctx, repo)
    mount = {"mountpoint": str(doc["mountpoint"]), "host": ctx.host}
    for backup_id in members:
        store.hold_mount(store.get(str(backup_id), vm_uuid=vm), holder, mount)


def umount(ctx: OpContext, guest: GuestFiles, mountpoint: str) -> None:
    """Unmount, then release what the mount held. A mount already gone (its process
    ended) is released all the same."""
    point = os.path.abspath(mountpoint)
    ours = [r for r in mounts.records() if r.mountpoint == point]
    try:
        guest.unmount(point)
    except InvalidArgument:
        if not ours or any(r.alive for r in ours):
            raise
    for record in ours:
        mount_holds.release(ctx, record)
