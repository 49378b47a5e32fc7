"""A backup's manifest read from its JSON, and the rules every manifest keeps (pure).
parse_manifest is the one reader of a manifest: every command and the REST API list,
verify, restore and prune through it, so none can disagree about which backup is
damaged; check_manifest also runs before a manifest is written. The manifest itself,
its names and its JSON as written: backup_manifest.py."""

from __future__ import annotations

import json
import re

from snapgroup.domain.backup_manifest import (
    FORMAT,
    FORMAT_VERSION,
    MEMORY_FILE,
    PIECE_SIZE,
    BackupManifest,
    DiskBackup,
    MemoryBackup,
    disk_file,
)
from snapgroup.domain.errors import InvalidArgument, OperationError
from snapgroup.domain.json_reader import JsonReader, as_str

_UUID = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

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
