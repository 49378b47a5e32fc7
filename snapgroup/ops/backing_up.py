"""Backing up, what the backup use cases share (ops/export.py, ops/restore.py,
ops/prune_backups.py): the repository opened, a VM's backups found, verifying backups
(checksums, `qemu-img check`, the backups a bad file breaks), restoring disk images, and
the results the facade hands out (ExportResult, VerifyReport). The export itself, the
writer, is exporting.py's. The repository is reached through the BackupStore port,
qemu-img through the ImageTool port.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from snapgroup.domain.backup_chains import broken_backups, reads_through
from snapgroup.domain.backup_manifest import (
    MANIFEST,
    MEMORY_FILE,
    PIECE_SIZE,
    BackupManifest,
    disk_file,
)
from snapgroup.domain.errors import (
    ImageToolError,
    OperationError,
    SnapgroupError,
)
from snapgroup.ops import backup_listing
from snapgroup.ops.backup_listing import vm_uuids as vm_uuids  # its home: backup_listing
from snapgroup.ops.context import OpContext
from snapgroup.ports import BackupStore, ImageTool, ProgressFn


@dataclass(frozen=True)
class ExportResult:
    """What an export (exporting.export_group) hands the facade."""

    manifest: BackupManifest
    discarded_partials: tuple[str, ...] = ()

    @property
    def full_reason(self) -> str | None:
        return self.manifest.full_reason


@dataclass(frozen=True)
class FileFinding:
    backup_id: str
    volume_uuid: str | None  # None: the backup's manifest (or, with `memory`, its state)
    problem: str
    memory: bool = False  # the backup's saved memory state (MEMORY_FILE)

    @property
    def name(self) -> str:
        if self.memory:
            return f"{self.backup_id}/{MEMORY_FILE}"
        return finding_name(self.backup_id, self.volume_uuid)


def finding_name(backup_id: str, volume_uuid: str | None) -> str:
    """`<backup>/<volume>.qcow2`, or `<backup>/manifest.json` for None: how a report
    names a bad file."""
    return f"{backup_id}/{disk_file(volume_uuid) if volume_uuid else MANIFEST}"


@dataclass(frozen=True)
class VerifyReport:
    checked: tuple[str, ...]  # backup ids checked
    findings: tuple[FileFinding, ...]
    broken: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # backup -> bad files

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "checked": list(self.checked),
            "findings": [
                {
                    "backupId": f.backup_id,
                    "volumeUuid": f.volume_uuid,
                    "file": f.name,
                    "problem": f.problem,
                }
                for f in self.findings
            ],
            "broken": {b: list(files) for b, files in self.broken.items()},
        }


def verify_backups(
    images: ImageTool,
    repo: BackupStore,
    backup_id: str | None = None,
    *,
    vm_uuid: str | None = None,
    memory: bool = True,
) -> VerifyReport:
    """Checksums and `qemu-img check` of every file the backup(s) read, each file once;
    each damaged or missing file (or unreadable manifest) named with the backups it
    breaks. `memory`: a memory group's saved state too (not for what never resumes it:
    its disks alone restored, browsed, or booted cold)."""
    everything, damaged_list = repo.scan()
    damaged = {d.backup_id: d for d in damaged_list if vm_uuid is None or d.vm_uuid == vm_uuid}
    by_id = {m.backup_id: m for m in everything}
    findings: list[FileFinding] = []
    if backup_id and backup_id in damaged:
        wanted: list[BackupManifest] = []
        damaged = {backup_id: damaged[backup_id]}
    elif backup_id:
        wanted = [repo.get(backup_id)]
        member_ids = {x for d in wanted[0].disks for x in d.chain}
        damaged = {b: d for b, d in damaged.items() if b in member_ids}
    else:
        wanted = [m for m in everything if vm_uuid is None or m.vm_uuid == vm_uuid]
    findings += [FileFinding(d.backup_id, None, d.problem) for d in damaged.values()]
    seen: set[tuple[str, str]] = set()
    for m in wanted:
        for disk in m.disks:
            for member in disk.chain:
                key = (member, disk.volume_uuid)
                if key in seen:
                    continue
                seen.add(key)
                owner = by_id.get(member)
                if owner is None:
                    if member not in damaged:  # a damaged one is named by its manifest
                        findings.append(
                            FileFinding(*key, "base backup missing from the repository")
                        )
                    continue
                path = repo.file(owner, disk.volume_uuid)
                recorded = owner.disk(disk.volume_uuid)
                problem = repo.file_problem(path, recorded.sha256, recorded.sha256_piece)
                if problem is None:
                    try:
                        check = images.check(path)
                        if not check.clean:
                            problem = f"qemu-img check: {check.corruptions} corruptions"
                    except ImageToolError as exc:
                        problem = f"qemu-img check failed: {exc.details}"
                if problem is not None:
                    findings.append(FileFinding(*key, problem))
    for m in wanted if memory else ():  # a memory group's saved state: in no chain
        if m.memory is not None and (problem := _memory_problem(images, repo, m)) is not None:
            findings.append(FileFinding(m.backup_id, None, problem, memory=True))
    bad_files = [(f.backup_id, f.volume_uuid) for f in findings if f.volume_uuid is not None]
    broken = {
        b: {finding_name(x, v) for x, v in files}
        for b, files in broken_backups(everything, bad_files).items()
    }
    for f in findings:
        if f.memory:
            broken.setdefault(f.backup_id, set()).add(f.name)
    for d in damaged.values():  # itself, and every backup reading through it
        manifest = finding_name(d.backup_id, None)
        broken.setdefault(d.backup_id, set()).add(manifest)
        for m in everything:
            if reads_through(m, {d.backup_id}):
                broken.setdefault(m.backup_id, set()).add(manifest)
    return VerifyReport(
        checked=tuple(m.backup_id for m in wanted) + tuple(sorted(damaged)),
        findings=tuple(findings),
        broken={b: tuple(sorted(files)) for b, files in broken.items()},
    )


def _memory_problem(images: ImageTool, repo: BackupStore, m: BackupManifest) -> str | None:
    assert m.memory is not None
    path = os.path.join(os.path.dirname(repo.file(m, m.disks[0].volume_uuid)), MEMORY_FILE)
    problem = repo.file_problem(path, m.memory.sha256, PIECE_SIZE)
    if problem is None:
        try:
            if not images.check(path).clean:
                problem = "qemu-img check: corruptions"
        except ImageToolError as exc:
            problem = f"qemu-img check failed: {exc.details}"
    return problem


def restore_to_dir(
    images: ImageTool,
    repo: BackupStore,
    backup_id: str,
    directory: str,
    *,
    keep_chain: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, str]:
    """Each disk of the backup as `<directory>/<volume-uuid>.qcow2`: standalone (flattened)
    or, with `keep_chain`, a thin overlay on the repository's file. Refuses a backup whose
    chain is damaged, before writing anything. Returns target -> written file."""
    manifest = restorable(images, repo, backup_id, memory=False)
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


def restorable(
    images: ImageTool, repo: BackupStore, backup_id: str, *, memory: bool = True
) -> BackupManifest:
    """The backup's manifest once every file it reads is intact (`memory`: its saved
    memory state too); else OperationError naming each bad file (its path and problem)
    and every backup that file breaks."""
    manifest = repo.get(backup_id)
    if repo.pending_prunes(manifest.vm_uuid):
        raise OperationError(
            f"a prune of VM {manifest.vm_uuid}'s backups in {repo.root} was interrupted: "
            "run `snapgroup recover` (or prune-backups again) first"
        )
    report = verify_backups(images, repo, backup_id, memory=memory)
    if not report.clean:
        raise OperationError(f"backup {backup_id} cannot be restored: {describe(repo, report)}")
    return manifest


def present_backup(
    images: ImageTool, repo: BackupStore, backup_id: str, *, memory: bool = True
) -> BackupManifest:
    """The backup's manifest when no prune of its VM is pending and every file its chain
    reads exists (cheap); else the full check's refusal (restorable)."""
    manifest = repo.get(backup_id)
    if repo.pending_prunes(manifest.vm_uuid):
        return restorable(images, repo, backup_id, memory=memory)
    for d in manifest.disks:
        for member in d.chain:
            if not repo.exists(repo.member_file(manifest.vm_uuid, member, d.volume_uuid)):
                return restorable(images, repo, backup_id, memory=memory)
    return manifest


def chain_problems(images: ImageTool, repo: BackupStore, manifest: BackupManifest) -> list[str]:
    """What is wrong with the files the backup's disks read, found without reading their
    data (a stat and the qcow2 headers, milliseconds): each file's size against what
    its manifest recorded, and each disk's chain as its headers name it (files, qcow2,
    virtual sizes) against the manifest's. Empty when the chain is the one the manifest
    names; whether each file holds the bytes it did is verify_backups' (a full read)."""
    problems: list[str] = []
    owners = {manifest.backup_id: manifest}
    for disk in manifest.disks:
        members = list(reversed(disk.chain))  # top first, as the headers are read
        paths = [repo.member_file(manifest.vm_uuid, m, disk.volume_uuid) for m in members]
        recorded = []
        for member, path in zip(members, paths, strict=True):
            try:
                if member not in owners:
                    owners[member] = repo.get(member, vm_uuid=manifest.vm_uuid)
                want = owners[member].disk(disk.volume_uuid)
                size = repo.size(path)
            except SnapgroupError as exc:
                problems.append(f"{path}: {exc.details}")
                continue
            recorded.append(want)
            if size != want.bytes_written:
                problems.append(f"{path}: {size} bytes, its manifest says {want.bytes_written}")
        if len(recorded) < len(paths):
            continue
        try:
            layers = images.chain(paths[0], shared=True)
        except ImageToolError as exc:
            problems.append(f"{paths[0]}: {exc.details}")
            continue
        found = [os.path.realpath(layer.path) for layer in layers]
        if found != [os.path.realpath(p) for p in paths]:
            problems.append(
                f"{paths[0]}: its headers chain {' -> '.join(found)}, "
                f"its manifest {' -> '.join(paths)}"
            )
            continue
        for layer, want in zip(layers, recorded, strict=True):
            if layer.format != "qcow2" or layer.virtual_size != want.virtual_size:
                problems.append(
                    f"{layer.path}: a {layer.format} image of {layer.virtual_size} bytes, "
                    f"its manifest says qcow2 of {want.virtual_size}"
                )
    return problems


def describe(repo: BackupStore, report: VerifyReport) -> str:
    """Each finding as `<path>: <problem> (breaks backups a, b)`."""
    listed, damaged = repo.scan()
    vm_of = {m.backup_id: m.vm_uuid for m in listed} | {d.backup_id: d.vm_uuid for d in damaged}
    parts = []
    for f in report.findings:
        where = "/".join(x for x in (repo.root, vm_of.get(f.backup_id), f.name) if x)
        breaks = sorted(b for b, files in report.broken.items() if f.name in files)
        parts.append(f"{where}: {f.problem} (breaks backups {', '.join(breaks)})")
    return "; ".join(parts)


EXPORT, RESTORE, PRUNE = "export", "restore", "prune-backups"


def open_store(ctx: OpContext, directory: str, *, existing: bool = True) -> BackupStore:
    """The repository at `directory` (backup_listing.repository)."""
    return backup_listing.repository(ctx.backup_store, directory, existing=existing)
