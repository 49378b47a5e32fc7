"""Backing up, what the backup use cases share (ops/export.py, ops/restore.py): an
export written against `ExportSource` (a group, its disks' snapshot files, its ancestors
in the VM's tree and their files still on this host), verifying backups, restoring
disk images. The repository is
reached through the BackupStore port, qemu-img through the ImageTool port.

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

from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from snapgroup.domain.backup_chains import broken_backups, newest_base, reads_through
from snapgroup.domain.backup_manifest import (
    MANIFEST,
    BackupManifest,
    DiskBackup,
    backing_name,
    disk_file,
)
from snapgroup.domain.errors import (
    ImageToolError,
    InvalidArgument,
    NotFound,
    OperationError,
)
from snapgroup.ops.context import OpContext
from snapgroup.ports import BackupStore, ImageTool, ProgressFn


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
        disks = [replace(d, sha256=f.result()) for d, f in zip(disks, sums, strict=True)]
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
        if step is not None:
            step("publishing")
        repo.publish(partial, manifest)
    except BaseException:
        hashing.shutdown(wait=True, cancel_futures=True)  # no read of a removed file
        repo.discard(partial)
        raise
    hashing.shutdown(wait=True)
    return ExportResult(manifest, discarded)


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


@dataclass(frozen=True)
class FileFinding:
    backup_id: str
    volume_uuid: str | None  # None: the backup's manifest
    problem: str

    @property
    def name(self) -> str:
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
) -> VerifyReport:
    """Checksums and `qemu-img check` of every file the backup(s) read, each file once;
    each damaged or missing file (or unreadable manifest) named with the backups it
    breaks."""
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
    bad_files = [(f.backup_id, f.volume_uuid) for f in findings if f.volume_uuid is not None]
    broken = {
        b: {finding_name(x, v) for x, v in files}
        for b, files in broken_backups(everything, bad_files).items()
    }
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
    manifest = restorable(images, repo, backup_id)
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


def restorable(images: ImageTool, repo: BackupStore, backup_id: str) -> BackupManifest:
    """The backup's manifest once every file it reads is intact; else OperationError
    naming each bad file (its path and problem) and every backup that file breaks."""
    manifest = repo.get(backup_id)
    if repo.pending_prunes(manifest.vm_uuid):
        raise OperationError(
            f"a prune of VM {manifest.vm_uuid}'s backups in {repo.root} was interrupted: "
            "run `snapgroup recover` (or prune-backups again) first"
        )
    report = verify_backups(images, repo, backup_id)
    if not report.clean:
        raise OperationError(f"backup {backup_id} cannot be restored: {describe(repo, report)}")
    return manifest


def present_backup(images: ImageTool, repo: BackupStore, backup_id: str) -> BackupManifest:
    """The backup's manifest when no prune of its VM is pending and every file its chain
    reads exists (cheap); else the full check's refusal (restorable)."""
    manifest = repo.get(backup_id)
    if repo.pending_prunes(manifest.vm_uuid):
        return restorable(images, repo, backup_id)
    for d in manifest.disks:
        for member in d.chain:
            if not repo.exists(repo.member_file(manifest.vm_uuid, member, d.volume_uuid)):
                return restorable(images, repo, backup_id)
    return manifest


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
    """The repository at `directory`; one that is not there is NotFound unless this is
    an export (which makes it) or a recovery (which finds nothing to finish there)."""
    if ctx.backup_store is None:
        raise InvalidArgument("this engine has no backup repository support")
    if not directory:
        raise InvalidArgument("a backup repository directory is needed")
    store = ctx.backup_store(directory)
    if existing and not store.exists(store.root):
        raise NotFound(f"no backup repository at {store.root}")
    return store


def vm_uuids(every: list[BackupManifest], vm: str) -> set[str]:
    key = vm.replace("-", "").lower()
    uuids = {m.vm_uuid for m in every if m.vm_uuid == key} or {
        m.vm_uuid for m in every if m.vm_name == vm
    }
    if not uuids:
        raise NotFound(f"no backup of VM {vm!r} in the repository")
    if len(uuids) > 1:
        raise InvalidArgument(f"VM name {vm!r} names several VMs' backups: give the UUID")
    return uuids
