"""`snapgroup mount`: one filesystem of a group or a backup exposed read-only at a
directory (FUSE, served by the appliance: ports.GuestFiles.mount) until `snapgroup
umount`. The mount outlives the command; the source's lock is held only while it is
set up, so a group that is mounted can still be deleted (and a backup pruned): its
mount then shows what the merge leaves of those files. Unmount first."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.guest_files import GuestDisk
from snapgroup.ops.context import OpContext
from snapgroup.ops.guest_sources import FilesSource, choose, only_disk, resolve
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
    with opened.lock:
        device = _device(opened.disks, fs)
        if device is None:
            with guest.open(opened.disks) as session:
                chosen = choose(session.filesystems(), disk=disk, name=fs)
            device, fs = chosen.device, chosen.name
        guest.mount(opened.disks, device, point, keep_fd=None)
    return Mounted(opened.describe, fs or "", point)


def _device(disks: tuple[GuestDisk, ...], fs: str | None) -> str | None:
    """The appliance's device for a filesystem named without listing them: vdb1 is
    the second disk handed over, partition 1 (/dev/sdb1); vg/lv is /dev/vg/lv."""
    if fs is None:
        return None
    for index, disk in enumerate(disks):
        suffix = fs.removeprefix(disk.target)
        if suffix != fs and (suffix == "" or suffix.isdigit()) and index < 26:
            return f"/dev/sd{chr(ord('a') + index)}{suffix}"
    if fs.count("/") == 1 and all(fs.split("/")):
        return f"/dev/{fs}"
    return None


def umount(guest: GuestFiles, mountpoint: str) -> None:
    guest.unmount(os.path.abspath(mountpoint))
