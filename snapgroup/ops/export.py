"""Export a group to a backup repository, verify backups, restore one (issue 15, phase 1).

Written against `ExportSource` (what it needs of the engine: a group, its disks'
snapshot files, its ancestors in the VM's tree and their files still on this host) so it
can be wired to the engine's context without knowing the store. qemu-img is reached only
through the ImageTool port; the repository's files through adapters/backup_repo.

An incremental export needs two things per disk: an export of an ancestor group in the
repository, and that ancestor's snapshot file still in the exported group's chain on
this host (the layers between them are the increment). Whenever either is missing the
disk is exported full and the manifest says why; an export never fails because an
increment is impossible.

Crash safety: everything is written in `.partial-<id>/` and published by one rename; a
process killed midway leaves a partial that is never listed, and the next export of the
VM removes it and starts again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from snapgroup.adapters.backup_repo import BackupRepo, file_problem, file_size, sha256_file
from snapgroup.domain.backup_manifest import (
    BackupManifest,
    DiskBackup,
    backing_name,
    broken_backups,
    newest_base,
)
from snapgroup.domain.errors import ImageToolError, OperationError
from snapgroup.ports import ImageTool, ProgressFn


@dataclass(frozen=True)
class SourceDisk:
    volume_uuid: str
    device_id: int
    target: str
    snapshot_file: str  # the file holding the group's point in time (its installPath)
    virtual_size: int


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


@dataclass(frozen=True)
class ExportResult:
    manifest: BackupManifest
    discarded_partials: tuple[str, ...] = ()

    @property
    def full_reason(self) -> str | None:
        return self.manifest.full_reason


def export_group(
    src: ExportSource,
    repo: BackupRepo,
    group_uuid: str,
    *,
    full: bool = False,
    progress: ProgressFn | None = None,
) -> ExportResult:
    group = src.group(group_uuid)
    discarded = tuple(repo.discard_partials(group.vm_uuid))
    base = None if full else newest_base(repo.backups(group.vm_uuid), group.ancestors)
    if full:
        reason: str | None = "full export requested"
    elif base is None:
        reason = "no export of an ancestor group in the repository"
    else:
        reason = None
    base_files = src.snapshot_files(base.group_uuid) if base is not None else {}
    backup_id = src.new_uuid()
    partial = repo.begin(group.vm_uuid, backup_id)
    disks: list[DiskBackup] = []
    reasons: list[str] = []
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
                    progress=progress,
                )
                chain = (*base_disk.chain, backup_id)
            else:
                if why:
                    reasons.append(f"{disk.target}: {why}")
                src.images.flatten(disk.snapshot_file, target, shared=True, progress=progress)
                chain = (backup_id,)
            disks.append(
                DiskBackup(
                    device_id=disk.device_id,
                    volume_uuid=disk.volume_uuid,
                    target=disk.target,
                    virtual_size=disk.virtual_size,
                    base_backup_id=chain[-2] if len(chain) > 1 else None,
                    chain=chain,
                    sha256=sha256_file(target),
                    bytes_written=file_size(target),
                )
            )
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
        )
        repo.publish(partial, manifest)
    except BaseException:
        repo.discard(partial)
        raise
    return ExportResult(manifest, discarded)


def _increment(
    images: ImageTool,
    repo: BackupRepo,
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
    if file_problem(repo.file(base, disk.volume_uuid), base.disk(disk.volume_uuid).sha256):
        return [], f"base backup {base.backup_id} is damaged or incomplete"
    lower = base_files.get(disk.volume_uuid)
    if lower is None:
        return [], f"base group {base.group_uuid} no longer exists on this host"
    layers: list[str] = []
    for layer in images.chain(disk.snapshot_file, shared=True):
        if layer.path == lower:
            return list(reversed(layers)), None
        layers.append(layer.path)
    return [], f"base group {base.group_uuid}'s file is not in this group's chain"


# verify ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileFinding:
    backup_id: str
    volume_uuid: str
    problem: str


@dataclass(frozen=True)
class VerifyReport:
    checked: tuple[str, ...]  # backup ids checked
    findings: tuple[FileFinding, ...]
    broken: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # backup -> bad files

    @property
    def clean(self) -> bool:
        return not self.findings


def verify_backups(
    images: ImageTool, repo: BackupRepo, backup_id: str | None = None
) -> VerifyReport:
    """Checksums and `qemu-img check` of every file the backup(s) read, each file once;
    each damaged or missing file named with the backups it breaks."""
    everything = repo.backups()
    by_id = {m.backup_id: m for m in everything}
    wanted = [repo.get(backup_id)] if backup_id else everything
    seen: set[tuple[str, str]] = set()
    findings: list[FileFinding] = []
    for m in wanted:
        for disk in m.disks:
            for member in disk.chain:
                key = (member, disk.volume_uuid)
                if key in seen:
                    continue
                seen.add(key)
                owner = by_id.get(member)
                if owner is None:
                    findings.append(FileFinding(*key, "base backup missing from the repository"))
                    continue
                path = repo.file(owner, disk.volume_uuid)
                problem = file_problem(path, owner.disk(disk.volume_uuid).sha256)
                if problem is None:
                    try:
                        check = images.check(path)
                        if not check.clean:
                            problem = f"qemu-img check: {check.corruptions} corruptions"
                    except ImageToolError as exc:
                        problem = f"qemu-img check failed: {exc.details}"
                if problem is not None:
                    findings.append(FileFinding(*key, problem))
    broken = broken_backups(everything, [(f.backup_id, f.volume_uuid) for f in findings])
    return VerifyReport(
        checked=tuple(m.backup_id for m in wanted),
        findings=tuple(findings),
        broken={b: tuple(f"{x}/{v}" for x, v in sorted(files)) for b, files in broken.items()},
    )


# restore ---------------------------------------------------------------------------------


def restore_to_dir(
    images: ImageTool,
    repo: BackupRepo,
    backup_id: str,
    directory: str,
    *,
    keep_chain: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, str]:
    """Each disk of the backup as `<directory>/<volume-uuid>.qcow2`: standalone (flattened)
    or, with `keep_chain`, a thin overlay on the repository's file. Refuses a backup whose
    chain is damaged, before writing anything. Returns target -> written file."""
    report = verify_backups(images, repo, backup_id)
    if not report.clean:
        bad = "; ".join(f"{f.backup_id}/{f.volume_uuid}: {f.problem}" for f in report.findings)
        raise OperationError(f"backup {backup_id} cannot be restored: {bad}")
    manifest = repo.get(backup_id)
    written: dict[str, str] = {}
    for disk in manifest.disks:
        out = f"{directory.rstrip('/')}/{disk.file}"
        source = repo.file(manifest, disk.volume_uuid)
        if images.exists(out):
            raise OperationError(f"{out} already exists; refusing to overwrite")
        if keep_chain:
            images.create_overlay(out, backing=source, backing_format="qcow2")
        else:
            images.flatten(source, out, shared=False, progress=progress)
        written[disk.target] = out
    return written
