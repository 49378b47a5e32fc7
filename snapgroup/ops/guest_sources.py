"""What the file browser reads (ops/files.py, ops/file_mounts.py): a group's snapshot
files or a repository backup's files, as disks for the appliance, with the lock that
keeps them unchanged while they are read; and choosing a filesystem among a session's.

A group's snapshot files are never written again, except by a delete merging into
them: the VM's lock is held while they are read, as export holds it. A backup's files
change only in a prune: the lock of the VM's backups is held, as restore holds it. A
backup's incremental chain is read in place (its files chain through their relative
backing names), never restored first.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from snapgroup.domain.errors import FilesystemError, InvalidArgument, NotFound
from snapgroup.domain.guest_files import FileEntry, GuestDisk, GuestFilesystem, check_target
from snapgroup.domain.validate import parse_uuid
from snapgroup.ops.backing_up import open_store, present_backup
from snapgroup.ops.context import OpContext
from snapgroup.ops.group_views import check_intact
from snapgroup.ports import GuestSession
from snapgroup.store.repo import Repo


@dataclass(frozen=True)
class FilesSource:
    """A group (`group`), or a backup (`backup` in the repository at `at`)."""

    group: str | None = None
    backup: str | None = None
    at: str | None = None

    def __post_init__(self) -> None:
        if (self.group is None) == (self.backup is None):
            raise InvalidArgument("name a group, or --backup ID with --at DIR")
        if self.backup is not None and not self.at:
            raise InvalidArgument("--backup needs --at DIR (the repository)")


@dataclass(frozen=True)
class Opened:
    """A source resolved: its disks, what it is (for replies) and its lock."""

    disks: tuple[GuestDisk, ...]
    describe: dict[str, Any]
    lock: AbstractContextManager[None]


def resolve(ctx: OpContext, source: FilesSource) -> Opened:
    if source.group is not None:
        return _group(ctx, parse_uuid(source.group, "group uuid"))
    assert source.backup is not None and source.at is not None
    return _backup(ctx, parse_uuid(source.backup, "backup id"), source.at)


def _group(ctx: OpContext, uuid: str) -> Opened:
    row = ctx.owned_group(uuid)
    with ctx.db.transaction() as session:
        repo = Repo(session)
        refs = repo.refs_with_snapshots([uuid])
        targets = {v.uuid: v.target for v in repo.volumes_of_vm(row.vm_uuid)}
    disks = []
    for ref, snap in sorted(refs, key=lambda rs: rs[0].device_id):
        check_intact(uuid, ref.volume_uuid, snap, to_be="read")
        if not ctx.images.exists(snap.install_path):
            raise NotFound(f"group {uuid}: its snapshot file {snap.install_path} is missing")
        target = targets.get(ref.volume_uuid) or f"disk{ref.device_id}"
        disks.append(GuestDisk(target, snap.install_path))
    if not disks:
        raise NotFound(f"group {uuid} has no disk")
    return Opened(
        tuple(disks),
        {"groupUuid": uuid, "vmInstanceUuid": row.vm_uuid},
        ctx.locks.vm(row.vm_uuid, wait=ctx.lock_wait),
    )


def _backup(ctx: OpContext, backup_id: str, at: str) -> Opened:
    store = open_store(ctx, at)
    manifest = present_backup(ctx.images, store, backup_id, memory=False)  # its disks' files
    disks = tuple(
        GuestDisk(d.target, store.file(manifest, d.volume_uuid))
        for d in sorted(manifest.disks, key=lambda d: d.device_id)
    )
    return Opened(
        disks,
        {"backupId": backup_id, "vmInstanceUuid": manifest.vm_uuid, "repository": store.root},
        ctx.locks.backups(manifest.vm_uuid, wait=ctx.lock_wait),
    )


def only_disk(disks: Sequence[GuestDisk], disk: str | None) -> None:
    """--disk names one of the source's disks."""
    if disk is None:
        return
    check_target(disk)
    if disk not in {d.target for d in disks}:
        names = ", ".join(d.target for d in disks)
        raise NotFound(f"no disk {disk} here (the disks: {names})")


def on_disk(filesystems: Sequence[GuestFilesystem], disk: str | None) -> list[GuestFilesystem]:
    return [f for f in filesystems if disk is None or disk in f.disks]


def choose(
    filesystems: Sequence[GuestFilesystem], *, disk: str | None, name: str | None
) -> GuestFilesystem:
    """The filesystem `name` names (on `disk` when given), or the only mountable one."""
    candidates = on_disk(filesystems, disk)
    if name is not None:
        for fs in candidates:
            if fs.name == name:
                if not fs.mountable:
                    raise FilesystemError(
                        f"{fs.name} holds no filesystem the appliance can mount (found: "
                        f"{fs.fstype or 'nothing'}; a damaged superblock looks like this)"
                    )
                return fs
        raise NotFound(f"no filesystem {name} (found: {_names(candidates)})")
    mountable = [f for f in candidates if f.mountable]
    if len(mountable) == 1:
        return mountable[0]
    if not mountable:
        where = f"disk {disk}" if disk else "these disks"
        raise FilesystemError(
            f"{where} hold no filesystem the appliance can mount (found: {_names(candidates)}; "
            "a damaged superblock looks like this)"
        )
    raise InvalidArgument(f"several filesystems: name one with --fs ({_names(mountable)})")


def named_device(disks: Sequence[GuestDisk], disk: str | None, fs: str | None) -> str | None:
    """The appliance's device for a filesystem named without listing them (the
    listing probes every device: seconds under TCG): vdb1 is the partition 1 of the
    disk handed over as vdb (/dev/sdb1 when it was second), vg/lv is /dev/vg/lv. None
    when `fs` is not given or names nothing this way."""
    if fs is None:
        return None
    for index, d in enumerate(disks):
        suffix = fs.removeprefix(d.target)
        if suffix != fs and (suffix == "" or suffix.isdigit()) and index < 26:
            if disk is not None and disk != d.target:
                return None
            return f"/dev/sd{chr(ord('a') + index)}{suffix}"
    if disk is None and fs.count("/") == 1 and all(fs.split("/")):
        return f"/dev/{fs}"
    return None


def open_filesystem(
    session: GuestSession,
    disks: Sequence[GuestDisk],
    path: str,
    *,
    disk: str | None,
    fs: str | None,
) -> tuple[GuestFilesystem, FileEntry]:
    """The filesystem (named, or the only one) and `path`'s entry in it. A named one is
    tried without listing first; when it cannot be mounted, the listing says why (no
    such filesystem, or none the appliance can mount there)."""
    device = named_device(disks, disk, fs)
    if device is not None:
        try:
            entry = session.stat(device, path)
        except FilesystemError:
            chosen = choose(session.filesystems(), disk=disk, name=fs)  # the precise error
            if chosen.device == device:
                raise
            entry = session.stat(chosen.device, path)
            return chosen, entry
        named = GuestFilesystem(fs or device, device, "", (), "", 0)
        return named, entry
    chosen = choose(session.filesystems(), disk=disk, name=fs)
    return chosen, session.stat(chosen.device, path)


def _names(filesystems: Sequence[GuestFilesystem]) -> str:
    return ", ".join(f"{f.name} ({f.fstype or 'none'})" for f in filesystems) or "none"
