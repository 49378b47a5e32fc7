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
    with opened.lock:
        device = named_device(opened.disks, disk, fs)
        if device is None:
            with guest.open(opened.disks) as session:
                chosen = choose(session.filesystems(), disk=disk, name=fs)
            device, fs = chosen.device, chosen.name
        guest.mount(opened.disks, device, point, keep_fd=None)
    return Mounted(opened.describe, fs or "", point)


def umount(guest: GuestFiles, mountpoint: str) -> None:
    guest.unmount(os.path.abspath(mountpoint))
