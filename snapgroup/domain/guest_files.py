"""A guest's files as the file browser shows them (`snapgroup files`): the disks'
filesystems and a directory's entries. Pure shapes and rules, no I/O: the appliance
(adapters/guest_files.py) reads them, ops/files.py uses them."""

from __future__ import annotations

import posixpath
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from snapgroup.domain.errors import InvalidArgument

# What the appliance cannot mount: no filesystem, or a container of others.
NOT_MOUNTABLE = frozenset(
    {"", "unknown", "swap", "LVM2_member", "crypto_LUKS", "linux_raid_member"}
)
_DISK_DEVICE = re.compile(r"/dev/(?:sd|vd|hd|xvd)([a-z]+)(\d*)")
_SUBVOLUME = re.compile(r"(/dev/[^/]+)/(.*)")
_TARGET = re.compile(r"[a-z]{1,4}[a-z]")


@dataclass(frozen=True)
class GuestDisk:
    """A disk handed to the appliance: the file whose chain is the disk's point in time
    (a group's snapshot file, a backup's file), opened read-only."""

    target: str  # the VM's name for it: vda, vdb...
    path: str
    format: str = "qcow2"


@dataclass(frozen=True)
class GuestFilesystem:
    """A whole disk, a partition, an LVM logical volume or a btrfs subvolume."""

    name: str  # ours: vdb (whole disk), vdb1 (partition), vg0/root (LV)
    device: str  # the appliance's: /dev/sdb1, /dev/vg0/root
    kind: str  # disk, partition, lv, subvolume
    disks: tuple[str, ...]  # the targets it lives on
    fstype: str  # ext4, xfs, vfat, swap, LVM2_member, unknown, "" (none found)
    size: int
    label: str = ""
    uuid: str = ""
    partitioned: bool = False  # a whole disk holding a partition table

    @property
    def mountable(self) -> bool:
        return self.fstype not in NOT_MOUNTABLE

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "disks": list(self.disks),
            "fstype": self.fstype or None,
            "size": self.size,
            "label": self.label or None,
            "uuid": self.uuid or None,
            "mountable": self.mountable,
        }


FILE_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symlink",
    stat.S_IFBLK: "block",
    stat.S_IFCHR: "char",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True)
class FileEntry:
    name: str
    st_mode: int  # type and permission bits, as lstat gives them
    size: int
    mtime_ns: int
    uid: int = 0
    gid: int = 0
    target: str | None = None  # a symlink's

    @property
    def type(self) -> str:
        return FILE_TYPES.get(stat.S_IFMT(self.st_mode), "unknown")

    @property
    def mode(self) -> int:
        return stat.S_IMODE(self.st_mode)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "size": self.size,
            "mtime": iso_time(self.mtime_ns),
            "mtimeNs": self.mtime_ns,
            "mode": f"{self.mode:04o}",
            "uid": self.uid,
            "gid": self.gid,
            "target": self.target,
        }


def iso_time(ns: int) -> str:
    """UTC, to the microsecond (mtimeNs keeps the nanoseconds)."""
    moment = datetime.fromtimestamp(ns // 1000 / 1e6, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def guest_path(value: str) -> str:
    """An absolute path inside the guest's filesystem, normalised. It is only ever
    resolved inside the appliance, never on the host."""
    if not value or not value.startswith("/"):
        raise InvalidArgument(f"guest path {value!r} must be absolute (start with /)")
    if "\0" in value:
        raise InvalidArgument("a guest path cannot hold a NUL character")
    normal = posixpath.normpath(value)
    return "/" + normal.lstrip("/")  # normpath keeps a leading //


def filesystem_name(device: str, targets: tuple[str, ...]) -> str:
    """The appliance's device as the VM calls it: the n-th disk handed over is the
    n-th target (/dev/sdb1 -> vdb1 when vdb was second); an LV is VG/LV."""
    if device.startswith("btrfsvol:"):  # btrfsvol:/dev/sda2/some/subvolume
        match = _SUBVOLUME.fullmatch(device.removeprefix("btrfsvol:"))
        if match is None:
            return device
        return f"{filesystem_name(match.group(1), targets)}:{match.group(2)}"
    match = _DISK_DEVICE.fullmatch(device)
    if match is not None:
        index = _disk_index(match.group(1))
        if index < len(targets):
            return targets[index] + match.group(2)
    return device.removeprefix("/dev/").removeprefix("mapper/")


def _disk_index(letters: str) -> int:
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - ord("a") + 1)
    return index - 1


def check_target(value: str) -> str:
    if not _TARGET.fullmatch(value):
        raise InvalidArgument(f"--disk {value!r} is not a disk target (vda, vdb, sdc...)")
    return value
