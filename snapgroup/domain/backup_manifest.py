"""A backup's manifest: what one export of a group wrote to a repository (pure).

One manifest per backup, `<DIR>/<vm-uuid>/<backup-id>/manifest.json`. It carries all a
restore needs without the store that made it: the group (its inventory as ZStack shows
it), the VM's domain XML, and per disk the file, its virtual size, the backups it reads
through (its chain, oldest first) and its file's SHA-256, taken in pieces (PIECE_SIZE).
Disks carry their own base: a disk added since the base backup is exported full while
the others are increments. A memory group's backup also holds its saved memory state
(`memory`: MEMORY_FILE, compressed; never an increment).

Reading a manifest validates it completely (manifest_rules.py: parse_manifest, the one
reader of a manifest's JSON, and check_manifest): a repository may sit on a shared mount
and its files may be damaged or edited, and every name in it becomes part of a path.
A VM's backups taken together (what a bad file breaks, an increment's base) are
backup_chains.py's.
"""

from __future__ import annotations

import json

from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.frozen import Frozen

# Not typing's, nor dataclasses: `snapgroup backups` reads every manifest with this module
# and its start-up is measured against `virsh list`'s (frozen.py says what they cost).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

FORMAT = "snapgroup-backup"
# 2: a disk's sha256 may be over pieces (sha256PieceSize); 1 is still read.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
# A file's checksum is SHA-256 over the SHA-256 digests of its consecutive pieces of this
# many bytes (the last one shorter; an empty file: SHA-256 of nothing): the pieces hash
# side by side on every core, so checking a file costs no more than writing it.
PIECE_SIZE = 16 << 20


def disk_file(volume_uuid: str) -> str:
    """A disk's file name in a backup: named by the volume's UUID, never by user text."""
    return f"{volume_uuid}.qcow2"


MEMORY_FILE = "memory.qcow2"  # a memory group's saved state, in its backup's directory


def backing_name(base_backup_id: str, volume_uuid: str) -> str:
    """The backing file name an increment's header carries: relative to the increment's
    own directory, so a repository moved or mounted elsewhere keeps its chains."""
    return f"../{base_backup_id}/{disk_file(volume_uuid)}"


class Partial(Frozen):
    """An export being written: its files go in `path` (`.partial-<id>/`, beside the
    backups so relative backing names resolve), the backup appears on publish."""

    __slots__ = ("backup_id", "path", "vm_uuid")
    vm_uuid: str
    backup_id: str
    path: str

    def __init__(self, vm_uuid: str, backup_id: str, path: str) -> None:
        self._init(locals())

    def file(self, volume_uuid: str) -> str:
        return f"{self.path.rstrip('/')}/{disk_file(volume_uuid)}"


class DiskBackup(Frozen):
    __slots__ = (
        "base_backup_id",
        "bytes_written",
        "chain",
        "compressed",
        "device_id",
        "sha256",
        "sha256_piece",
        "target",
        "virtual_size",
        "volume_uuid",
    )
    device_id: int
    volume_uuid: str
    target: str  # vda, sdb...: where restore attaches it
    virtual_size: int
    base_backup_id: str | None  # None: this file is full (no backing file)
    chain: tuple[str, ...]  # backup ids this disk reads through, oldest (full) first, ending here
    sha256: str
    bytes_written: int
    # The sha256's piece size; None: the SHA-256 of the whole file (formatVersion 1).
    sha256_piece: int | None
    compressed: bool  # its clusters zstd-compressed (export --compress)

    def __init__(
        self,
        device_id: int,
        volume_uuid: str,
        target: str,
        virtual_size: int,
        base_backup_id: str | None,
        chain: tuple[str, ...],
        sha256: str,
        bytes_written: int,
        sha256_piece: int | None = PIECE_SIZE,
        compressed: bool = False,
    ) -> None:
        self._init(locals())

    @property
    def file(self) -> str:
        return disk_file(self.volume_uuid)

    @property
    def full(self) -> bool:
        return self.base_backup_id is None


class MemoryBackup(Frozen):
    """A memory group's saved state in its backup: MEMORY_FILE, a compressed qcow2 of
    the state's `size` bytes (the group's memory file, whose own SHA-256 was
    `state_sha256`); `sha256` over pieces of PIECE_SIZE, as a disk's."""

    __slots__ = ("bytes_written", "mode", "sha256", "size", "state_sha256")
    size: int
    state_sha256: str
    sha256: str
    bytes_written: int
    mode: str  # how it was taken: paused or live

    def __init__(
        self, size: int, state_sha256: str, sha256: str, bytes_written: int, mode: str
    ) -> None:
        self._init(locals())

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": MEMORY_FILE,
            "size": self.size,
            "stateSha256": self.state_sha256,
            "sha256": self.sha256,
            "sha256PieceSize": PIECE_SIZE,
            "bytesWritten": self.bytes_written,
            "compressed": True,
            "mode": self.mode,
        }


class BackupManifest(Frozen):
    __slots__ = (
        "backup_id",
        "created",
        "disks",
        "domain_xml",
        "extra",
        "format_version",
        "full_reason",
        "group_create_date",
        "group_name",
        "group_uuid",
        "inventory",
        "memory",
        "vm_name",
        "vm_uuid",
    )
    backup_id: str
    created: str  # ISO 8601 UTC of the export: orders a VM's backups
    vm_uuid: str
    vm_name: str
    group_uuid: str
    group_name: str
    group_create_date: str
    inventory: Mapping[str, Any]  # the group's inventory (ZStack's VolumeSnapshotGroup shape)
    domain_xml: str
    disks: tuple[DiskBackup, ...]
    # Why a disk (or every disk) was exported full although increments were asked for.
    full_reason: str | None
    format_version: int
    extra: Mapping[str, Any]  # keys a later version adds
    memory: MemoryBackup | None  # a memory group's saved state

    def __init__(
        self,
        backup_id: str,
        created: str,
        vm_uuid: str,
        vm_name: str,
        group_uuid: str,
        group_name: str,
        group_create_date: str,
        inventory: Mapping[str, Any],
        domain_xml: str,
        disks: tuple[DiskBackup, ...],
        full_reason: str | None = None,
        format_version: int = FORMAT_VERSION,
        extra: Mapping[str, Any] | None = None,  # None: {}
        memory: MemoryBackup | None = None,
    ) -> None:
        extra = {} if extra is None else extra
        self._init(locals())

    @property
    def full(self) -> bool:
        return all(d.full for d in self.disks)

    def disk(self, volume_uuid: str) -> DiskBackup:
        for d in self.disks:
            if d.volume_uuid == volume_uuid:
                return d
        raise InvalidArgument(f"backup {self.backup_id} has no disk {volume_uuid}")

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "format": FORMAT,
            "formatVersion": FORMAT_VERSION,  # what this snapgroup writes
            "backupId": self.backup_id,
            "created": self.created,
            "vm": {"uuid": self.vm_uuid, "name": self.vm_name},
            "group": {
                "uuid": self.group_uuid,
                "name": self.group_name,
                "createDate": self.group_create_date,
                "inventory": dict(self.inventory),
            },
            "domainXml": self.domain_xml,
            "fullReason": self.full_reason,
            "disks": [
                {
                    "deviceId": d.device_id,
                    "volumeUuid": d.volume_uuid,
                    "target": d.target,
                    "virtualSize": d.virtual_size,
                    "file": d.file,
                    "baseBackupId": d.base_backup_id,
                    "chain": list(d.chain),
                    "sha256": d.sha256,
                    **({"sha256PieceSize": d.sha256_piece} if d.sha256_piece else {}),
                    **({"compressed": True} if d.compressed else {}),
                    "bytesWritten": d.bytes_written,
                }
                for d in self.disks
            ],
            **({"memory": self.memory.to_dict()} if self.memory else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def summary(self) -> dict[str, Any]:
        """The backup as listings show it (CLI --json, REST): no domain XML, inventory or
        checksums (the manifest has them)."""
        return {
            "backupId": self.backup_id,
            "created": self.created,
            "vmInstanceUuid": self.vm_uuid,
            "vmName": self.vm_name,
            "groupUuid": self.group_uuid,
            "groupName": self.group_name,
            "full": self.full,
            "fullReason": self.full_reason,
            "withMemory": self.memory is not None,
            "disks": [
                {
                    "target": d.target,
                    "volumeUuid": d.volume_uuid,
                    "virtualSize": d.virtual_size,
                    "baseBackupId": d.base_backup_id,
                    "chain": list(d.chain),
                    "bytesWritten": d.bytes_written,
                    "compressed": d.compressed,
                }
                for d in self.disks
            ],
        }


# What a damaged manifest or file means ------------------------------------------------


class DamagedBackup(Frozen):
    """A backup directory whose manifest cannot be read (or is gone): its files cannot be
    checked or restored, and every backup whose chain reads through it is broken too."""

    __slots__ = ("backup_id", "problem", "vm_uuid")
    vm_uuid: str
    backup_id: str
    problem: str

    def __init__(self, vm_uuid: str, backup_id: str, problem: str) -> None:
        self._init(locals())

    def to_dict(self) -> dict[str, Any]:
        return {"backupId": self.backup_id, "vmInstanceUuid": self.vm_uuid, "problem": self.problem}


class ImageCheck(Frozen):
    """`qemu-img check` of one file by itself: corruptions make it unreadable, leaks only
    waste space."""

    __slots__ = ("check_errors", "corruptions", "leaks")
    corruptions: int
    leaks: int
    check_errors: int

    def __init__(self, corruptions: int, leaks: int, check_errors: int) -> None:
        self._init(locals())

    @property
    def clean(self) -> bool:
        return self.corruptions == 0 and self.check_errors == 0
