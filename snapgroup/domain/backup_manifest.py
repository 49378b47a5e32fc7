"""A backup's manifest: what one export of a group wrote to a repository (pure).

One manifest per backup, `<DIR>/<vm-uuid>/<backup-id>/manifest.json`. It carries all a
restore needs without the store that made it: the group (its inventory as ZStack shows
it), the VM's domain XML, and per disk the file, its virtual size, the backups it reads
through (its chain, oldest first) and its file's SHA-256, taken in pieces (PIECE_SIZE).
Disks carry their own base: a disk added since the base backup is exported full while
the others are increments. A memory group's backup also holds its saved memory state
(`memory`: MEMORY_FILE, compressed; never an increment).

Reading a manifest validates it completely: a repository may sit on a shared mount and
its files may be damaged or edited, and every name in it becomes part of a path.
A VM's backups taken together (what a bad file breaks, an increment's base) are
backup_chains.py's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from snapgroup.domain.errors import InvalidArgument, OperationError
from snapgroup.domain.json_reader import JsonReader, as_str

FORMAT = "snapgroup-backup"
# 2: a disk's sha256 may be over pieces (sha256PieceSize); 1 is still read.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
# A file's checksum is SHA-256 over the SHA-256 digests of its consecutive pieces of this
# many bytes (the last one shorter; an empty file: SHA-256 of nothing): the pieces hash
# side by side on every core, so checking a file costs no more than writing it.
PIECE_SIZE = 16 << 20

_UUID = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def disk_file(volume_uuid: str) -> str:
    """A disk's file name in a backup: named by the volume's UUID, never by user text."""
    return f"{volume_uuid}.qcow2"


MEMORY_FILE = "memory.qcow2"  # a memory group's saved state, in its backup's directory


def backing_name(base_backup_id: str, volume_uuid: str) -> str:
    """The backing file name an increment's header carries: relative to the increment's
    own directory, so a repository moved or mounted elsewhere keeps its chains."""
    return f"../{base_backup_id}/{disk_file(volume_uuid)}"


@dataclass(frozen=True)
class Partial:
    """An export being written: its files go in `path` (`.partial-<id>/`, beside the
    backups so relative backing names resolve), the backup appears on publish."""

    vm_uuid: str
    backup_id: str
    path: str

    def file(self, volume_uuid: str) -> str:
        return f"{self.path.rstrip('/')}/{disk_file(volume_uuid)}"


@dataclass(frozen=True)
class DiskBackup:
    device_id: int
    volume_uuid: str
    target: str  # vda, sdb...: where restore attaches it
    virtual_size: int
    base_backup_id: str | None  # None: this file is full (no backing file)
    chain: tuple[str, ...]  # backup ids this disk reads through, oldest (full) first, ending here
    sha256: str
    bytes_written: int
    # The sha256's piece size; None: the SHA-256 of the whole file (formatVersion 1).
    sha256_piece: int | None = PIECE_SIZE
    compressed: bool = False  # its clusters zstd-compressed (export --compress)

    @property
    def file(self) -> str:
        return disk_file(self.volume_uuid)

    @property
    def full(self) -> bool:
        return self.base_backup_id is None


@dataclass(frozen=True)
class MemoryBackup:
    """A memory group's saved state in its backup: MEMORY_FILE, a compressed qcow2 of
    the state's `size` bytes (the group's memory file, whose own SHA-256 was
    `state_sha256`); `sha256` over pieces of PIECE_SIZE, as a disk's."""

    size: int
    state_sha256: str
    sha256: str
    bytes_written: int
    mode: str  # how it was taken: paused or live

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


@dataclass(frozen=True)
class BackupManifest:
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
    full_reason: str | None = None
    format_version: int = FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys a later version adds
    memory: MemoryBackup | None = None  # a memory group's saved state

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


# Keys to_dict writes; anything else at the top level is kept in `extra` (forward compatible).
_KNOWN = {
    "format",
    "formatVersion",
    "backupId",
    "created",
    "vm",
    "group",
    "domainXml",
    "fullReason",
    "disks",
    "memory",
}


def parse_manifest(text: str | bytes, *, where: str = "manifest") -> BackupManifest:
    """A manifest from its JSON. InvalidArgument (SYS.1007) when it is not one of ours or
    is inconsistent; OperationError (SYS.1006) when a newer snapgroup wrote it."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{where}: not JSON: {exc}") from exc
    r = JsonReader(doc, where)
    if r.str_("format") != FORMAT:
        raise InvalidArgument(f"{where}: not a snapgroup backup manifest")
    version = r.int_("formatVersion")
    if version > FORMAT_VERSION:
        raise OperationError(
            f"{where}: repository format {version} is newer than this snapgroup reads "
            f"({FORMAT_VERSION}); upgrade snapgroup"
        )
    if version < 1:
        raise InvalidArgument(f"{where}: formatVersion {version} is not valid")
    backup_id = r.uuid("backupId")
    vm = JsonReader(r.obj("vm"), f"{where}: vm")
    group = JsonReader(r.obj("group"), f"{where}: group")
    disks = tuple(
        _disk(JsonReader(d, f"{where}: disks[{i}]"), backup_id)
        for i, d in enumerate(r.list_("disks"))
    )
    manifest = BackupManifest(
        backup_id=backup_id,
        created=r.str_("created"),
        vm_uuid=vm.uuid("uuid"),
        vm_name=vm.str_("name"),
        group_uuid=group.uuid("uuid"),
        group_name=group.str_("name"),
        group_create_date=group.str_("createDate"),
        inventory=group.obj("inventory"),
        domain_xml=r.str_("domainXml"),
        disks=disks,
        full_reason=r.opt_str("fullReason"),
        format_version=version,
        extra={k: v for k, v in doc.items() if k not in _KNOWN},
        memory=_memory(JsonReader(doc["memory"], f"{where}: memory")) if "memory" in doc else None,
    )
    check_manifest(manifest, where=where)
    return manifest


def check_manifest(m: BackupManifest, *, where: str = "manifest") -> None:
    """The rules every manifest keeps (also run before one is written)."""
    for name, value in (("backupId", m.backup_id), ("vm uuid", m.vm_uuid)):
        if not _UUID.fullmatch(value):
            raise InvalidArgument(f"{where}: {name} {value!r} is not a 32-hex UUID")
    if not m.disks:
        raise InvalidArgument(f"{where}: no disks")
    for what, values in (
        ("deviceId", [d.device_id for d in m.disks]),
        ("volumeUuid", [d.volume_uuid for d in m.disks]),
        ("target", [d.target for d in m.disks]),
    ):
        if len(set(values)) != len(values):
            raise InvalidArgument(f"{where}: two disks with the same {what}")
    for d in m.disks:
        ctx = f"{where}: disk {d.target}"
        if not _UUID.fullmatch(d.volume_uuid):
            raise InvalidArgument(f"{ctx}: volumeUuid {d.volume_uuid!r} is not a 32-hex UUID")
        if d.device_id < 0 or d.virtual_size <= 0 or d.bytes_written < 0:
            raise InvalidArgument(f"{ctx}: deviceId, virtualSize or bytesWritten out of range")
        if d.sha256_piece is not None and d.sha256_piece <= 0:
            raise InvalidArgument(f"{ctx}: sha256PieceSize {d.sha256_piece} is not positive")
        if not _SHA256.fullmatch(d.sha256):
            raise InvalidArgument(f"{ctx}: sha256 {d.sha256!r} is not 64 lowercase hex digits")
        if not d.chain or d.chain[-1] != m.backup_id:
            raise InvalidArgument(f"{ctx}: chain must end with this backup ({m.backup_id})")
        if len(set(d.chain)) != len(d.chain) or not all(_UUID.fullmatch(c) for c in d.chain):
            raise InvalidArgument(f"{ctx}: chain holds a repeated or malformed backup id")
        expected_base = d.chain[-2] if len(d.chain) > 1 else None
        if d.base_backup_id != expected_base:
            raise InvalidArgument(
                f"{ctx}: baseBackupId {d.base_backup_id} is not the chain's previous "
                f"backup ({expected_base})"
            )


def _memory(r: JsonReader) -> MemoryBackup:
    if r.str_("file") != MEMORY_FILE or r.int_("sha256PieceSize") != PIECE_SIZE:
        raise InvalidArgument(f"{r.where}: file must be {MEMORY_FILE}, its pieces {PIECE_SIZE}")
    memory = MemoryBackup(
        size=r.int_("size"),
        state_sha256=r.str_("stateSha256"),
        sha256=r.str_("sha256"),
        bytes_written=r.int_("bytesWritten"),
        mode=r.str_("mode"),
    )
    for name in ("state_sha256", "sha256"):
        if not _SHA256.fullmatch(getattr(memory, name)):
            raise InvalidArgument(f"{r.where}: {name} is not 64 lowercase hex digits")
    if memory.size <= 0 or memory.bytes_written < 0:
        raise InvalidArgument(f"{r.where}: size or bytesWritten out of range")
    return memory


def _disk(r: JsonReader, backup_id: str) -> DiskBackup:
    volume_uuid = r.uuid("volumeUuid")
    # The file name is derived, never read: a manifest cannot point restore at a path.
    if r.str_("file") != disk_file(volume_uuid):
        raise InvalidArgument(f"{r.where}: file must be {disk_file(volume_uuid)}")
    base = r.opt_str("baseBackupId")
    return DiskBackup(
        device_id=r.int_("deviceId"),
        volume_uuid=volume_uuid,
        target=r.str_("target"),
        virtual_size=r.int_("virtualSize"),
        base_backup_id=base,
        chain=tuple(as_str(c, f"{r.where}: chain") for c in r.list_("chain")),
        sha256=r.str_("sha256"),
        bytes_written=r.int_("bytesWritten"),
        sha256_piece=r.opt_int("sha256PieceSize"),
        compressed=r.opt_bool("compressed"),
    )


# What a damaged manifest or file means ------------------------------------------------


@dataclass(frozen=True)
class DamagedBackup:
    """A backup directory whose manifest cannot be read (or is gone): its files cannot be
    checked or restored, and every backup whose chain reads through it is broken too."""

    vm_uuid: str
    backup_id: str
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return {"backupId": self.backup_id, "vmInstanceUuid": self.vm_uuid, "problem": self.problem}


@dataclass(frozen=True)
class ImageCheck:
    """`qemu-img check` of one file by itself: corruptions make it unreadable, leaks only
    waste space."""

    corruptions: int
    leaks: int
    check_errors: int

    @property
    def clean(self) -> bool:
        return self.corruptions == 0 and self.check_errors == 0
