"""An export, the backup use cases' writer (ops/export.py runs it, journaled; policies
and tests call it too): a group's disks copied into a repository's new backup, written
against `ExportSource` (a group, its disks' snapshot files, its ancestors in the VM's tree
and their files still on this host). The repository is reached through the BackupStore
port, qemu-img through the ImageTool port.

An incremental export needs two things per disk: an export of an ancestor group in the
repository, and that ancestor's snapshot file still in the exported group's chain on
this host (the layers between them are the increment). Whenever either is missing the
disk is exported full and the manifest says why; an export never fails because an
increment is impossible.

A memory group's saved state goes along, compressed (MEMORY_FILE; always whole: a
state is no increment of another), its SHA-256 checked against the group's first.

Crash safety: everything is written in `.partial-<id>/` and published by one rename; a
process killed midway leaves a partial that is never listed, and the next export of the
VM removes it and starts again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from snapgroup.domain.backup_chains import newest_base, reads_through
from snapgroup.domain.backup_manifest import (
    MEMORY_FILE,
    BackupManifest,
    DiskBackup,
    MemoryBackup,
    Partial,
    backing_name,
)
from snapgroup.domain.errors import OperationError
from snapgroup.ops.backing_up import ExportResult
from snapgroup.ports import BackupStore, ImageTool, ProgressFn


@dataclass(frozen=True)
class SourceDisk:
    volume_uuid: str
    device_id: int
    target: str
    snapshot_file: str  # the file holding the group's point in time (its installPath)
    virtual_size: int


@dataclass(frozen=True)
class SourceMemory:
    """A memory group's saved state: its file, as the group recorded it."""

    file: str
    size: int
    sha256: str
    mode: str


@dataclass(frozen=True)
class SourceGroup:
    vm_uuid: str
    vm_name: str
    group_uuid: str
    group_name: str
    create_date: str
    inventory: Mapping[str, Any]
    domain_xml: str
    disks: tuple[SourceDisk, ...]
    # Group uuids from the group's parent to its tree's root (the VM's tree of groups).
    ancestors: tuple[str, ...]
    memory: SourceMemory | None = None


class ExportSource(Protocol):
    """What export needs of the engine."""

    @property
    def images(self) -> ImageTool: ...

    def group(self, group_uuid: str) -> SourceGroup: ...

    def snapshot_files(self, group_uuid: str) -> Mapping[str, str]:
        """volume uuid -> that group's snapshot file on this host; empty when the group
        is gone locally (deleted groups cannot give an increment's lower bound)."""
        ...

    def now(self) -> str: ...

    def new_uuid(self) -> str: ...


def export_group(
    src: ExportSource,
    repo: BackupStore,
    group_uuid: str,
    *,
    full: bool = False,
    compress: bool = False,
    progress: ProgressFn | None = None,
    backup_id: str | None = None,
    step: Callable[[str], None] | None = None,
) -> ExportResult:
    """`backup_id`: the new backup's id (default src.new_uuid()); `step(name)` is called
    before each stage (the journal's steps: writing, publishing). `compress`: the files'
    clusters compressed (an increment may sit on an uncompressed base and vice versa)."""
    group = src.group(group_uuid)
    discarded = tuple(repo.discard_partials(group.vm_uuid))
    listed, damaged = repo.scan(group.vm_uuid)
    # A backup reading through a damaged one is no base: its chain cannot be checked.
    bad = {d.backup_id for d in damaged}
    usable = [m for m in listed if not reads_through(m, bad)]
    base = None if full else newest_base(usable, group.ancestors)
    if full:
        reason: str | None = "full export requested"
    elif base is None:
        skipped = f" (skipped for damaged manifests: {', '.join(sorted(bad))} and their increments)"
        reason = "no export of an ancestor group in the repository" + (skipped if bad else "")
    else:
        reason = None
    base_files = src.snapshot_files(base.group_uuid) if base is not None else {}
    backup_id = backup_id or src.new_uuid()
    if step is not None:
        step("writing")
    partial = repo.begin(group.vm_uuid, backup_id)
    disks: list[DiskBackup] = []
    reasons: list[str] = []
    # Each file is sealed (fsynced and its checksum read back, side by side) while the
    # next disk copies: the copy is qemu-img's, the writeback the disk's, the hash ours.
    hashing = ThreadPoolExecutor(1, thread_name_prefix="sha256")
    sums: list[Future[str]] = []
    try:
        for disk in group.disks:
            target = partial.file(disk.volume_uuid)
            layers, why = _increment(src.images, repo, base, base_files, disk)
            if base is not None and layers:
                base_disk = base.disk(disk.volume_uuid)
                src.images.export_incremental(
                    layers,
                    target,
                    base_name=backing_name(base.backup_id, disk.volume_uuid),
                    compress=compress,
                    progress=progress,
                )
                chain = (*base_disk.chain, backup_id)
            else:
                if why:
                    reasons.append(f"{disk.target}: {why}")
                src.images.flatten(
                    disk.snapshot_file, target, shared=True, compress=compress, progress=progress
                )
                chain = (backup_id,)
            sums.append(hashing.submit(repo.seal, target))
            disks.append(
                DiskBackup(
                    device_id=disk.device_id,
                    volume_uuid=disk.volume_uuid,
                    target=disk.target,
                    virtual_size=disk.virtual_size,
                    base_backup_id=chain[-2] if len(chain) > 1 else None,
                    chain=chain,
                    sha256="",  # below, once read
                    bytes_written=repo.size(target),
                    compressed=compress,
                )
            )
        disks = [d.replace(sha256=f.result()) for d, f in zip(disks, sums, strict=True)]
        memory = _memory(src.images, repo, partial, group.memory) if group.memory else None
        manifest = BackupManifest(
            backup_id=backup_id,
            created=src.now(),
            vm_uuid=group.vm_uuid,
            vm_name=group.vm_name,
            group_uuid=group.group_uuid,
            group_name=group.group_name,
            group_create_date=group.create_date,
            inventory=group.inventory,
            domain_xml=group.domain_xml,
            disks=tuple(disks),
            full_reason=reason or ("; ".join(reasons) if reasons else None),
            memory=memory,
        )
        if step is not None:
            step("publishing")
        repo.publish(partial, manifest)
    except BaseException:
        hashing.shutdown(wait=True, cancel_futures=True)  # no read of a removed file
        repo.discard(partial)
        raise
    hashing.shutdown(wait=True)
    return ExportResult(manifest, discarded)


def _memory(
    images: ImageTool, repo: BackupStore, partial: Partial, memory: SourceMemory
) -> MemoryBackup:
    """The group's saved state, once it is the one recorded, packed into the partial."""
    digest = images.digest(memory.file)
    if (digest.size, digest.sha256) != (memory.size, memory.sha256):
        raise OperationError(
            f"memory file {memory.file} changed since the group was taken: not exported"
        )
    target = f"{partial.path.rstrip('/')}/{MEMORY_FILE}"
    images.pack_memory(memory.file, target)
    return MemoryBackup(
        size=digest.size,
        state_sha256=digest.sha256,
        sha256=repo.seal(target),
        bytes_written=repo.size(target),
        mode=memory.mode,
    )


def _increment(
    images: ImageTool,
    repo: BackupStore,
    base: BackupManifest | None,
    base_files: Mapping[str, str],
    disk: SourceDisk,
) -> tuple[list[str], str | None]:
    """The local layers (bottom first) between the base's point in time and the group's,
    or ([], why not) when this disk must be exported full."""
    if base is None:
        return [], None
    if disk.volume_uuid not in {d.volume_uuid for d in base.disks}:
        return [], "disk not in the base backup"
    # Present at its recorded size: hashing the base's whole chain at every export would
    # cost more than the increment (1 GiB base: 2 s for a 40 MiB increment). Content is
    # verify-backup's and restore's to check; both read every file's SHA-256.
    for member in base.disk(disk.volume_uuid).chain:
        if not repo.exists(repo.member_file(base.vm_uuid, member, disk.volume_uuid)):
            return [], f"base backup {member}'s file of this disk is missing"
    base_file = repo.file(base, disk.volume_uuid)
    if repo.size(base_file) != base.disk(disk.volume_uuid).bytes_written:
        return [], f"base backup {base.backup_id} is damaged or incomplete (size)"
    lower = base_files.get(disk.volume_uuid)
    if lower is None:
        return [], f"base group {base.group_uuid} no longer exists on this host"
    layers: list[str] = []
    for layer in images.chain(disk.snapshot_file, shared=True):
        if layer.path == lower:
            return list(reversed(layers)), None
        layers.append(layer.path)
    return [], f"base group {base.group_uuid}'s file is not in this group's chain"
