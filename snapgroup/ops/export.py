"""Export a group to a backup repository, verify backups, restore one (issue 15, phase 1).

The core is written against `ExportSource` (what it needs of the engine: a group, its
disks' snapshot files, its ancestors in the VM's tree and their files still on this
host) and the BackupStore port (the repository); `ContextSource` is that source over an
OpContext (the store's groups and snapshots, the domain XML from the Hypervisor port).
qemu-img is reached only through the ImageTool port. The use cases at the end (export,
backups, verify_backup, restore, prune_backups) lock, journal and recover.

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

import os
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any, Protocol

from snapgroup.domain.backup_manifest import (
    BackupManifest,
    DiskBackup,
    backing_name,
    broken_backups,
    disk_file,
    newest_base,
)
from snapgroup.domain.errors import (
    ImageToolError,
    InvalidArgument,
    NotFound,
    OperationError,
    SnapgroupError,
)
from snapgroup.domain.inventory import zstack_date
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.planner import merge_room
from snapgroup.domain.retention import AutoGroup, VmRef
from snapgroup.domain.validate import parse_uuid, validate_name
from snapgroup.infra.locks import vm_lock
from snapgroup.ops.context import OpContext
from snapgroup.ops.group_views import load_groups
from snapgroup.ops.journal import DONE, FAILED, ROLLED_BACK
from snapgroup.ops.recovery import recovers
from snapgroup.ops.resolve import lookup_or_none
from snapgroup.ports import BackupStore, ImageTool, ProgressFn
from snapgroup.store.policy_repo import PolicyRecord
from snapgroup.store.repo import Repo
from snapgroup.store.tables import SnapshotRow


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
    progress: ProgressFn | None = None,
    backup_id: str | None = None,
    step: Callable[[str], None] | None = None,
) -> ExportResult:
    """`backup_id`: the new backup's id (default src.new_uuid()); `step(name)` is called
    before each stage (the journal's steps: writing, publishing)."""
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
    backup_id = backup_id or src.new_uuid()
    if step is not None:
        step("writing")
    partial = repo.begin(group.vm_uuid, backup_id)
    disks: list[DiskBackup] = []
    reasons: list[str] = []
    # Each file's SHA-256 is read back while the next disk copies (the copy is I/O and
    # qemu-img's, the hash one core of ours).
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
                    progress=progress,
                )
                chain = (*base_disk.chain, backup_id)
            else:
                if why:
                    reasons.append(f"{disk.target}: {why}")
                src.images.flatten(disk.snapshot_file, target, shared=True, progress=progress)
                chain = (backup_id,)
            sums.append(hashing.submit(repo.sha256, target))
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
        path = f"{repo.root}/{base.vm_uuid}/{member}/{disk_file(disk.volume_uuid)}"
        if not repo.exists(path):
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
    images: ImageTool,
    repo: BackupStore,
    backup_id: str | None = None,
    *,
    vm_uuid: str | None = None,
) -> VerifyReport:
    """Checksums and `qemu-img check` of every file the backup(s) read, each file once;
    each damaged or missing file named with the backups it breaks."""
    everything = repo.backups()
    by_id = {m.backup_id: m for m in everything}
    if backup_id:
        wanted = [repo.get(backup_id)]
    else:
        wanted = [m for m in everything if vm_uuid is None or m.vm_uuid == vm_uuid]
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
                problem = repo.file_problem(path, owner.disk(disk.volume_uuid).sha256)
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


def _present(images: ImageTool, repo: BackupStore, backup_id: str) -> BackupManifest:
    """The backup's manifest when no prune of its VM is pending and every file its chain
    reads exists (cheap); else the full check's refusal (restorable)."""
    manifest = repo.get(backup_id)
    if repo.pending_prunes(manifest.vm_uuid):
        return restorable(images, repo, backup_id)
    for d in manifest.disks:
        for member in d.chain:
            path = f"{repo.root}/{manifest.vm_uuid}/{member}/{disk_file(d.volume_uuid)}"
            if not repo.exists(path):
                return restorable(images, repo, backup_id)
    return manifest


def describe(repo: BackupStore, report: VerifyReport) -> str:
    """Each finding as `<file>: <problem> (breaks backups a, b)`."""
    every = {m.backup_id: m for m in repo.backups()}
    parts = []
    for f in report.findings:
        owner = every.get(f.backup_id)
        path = (
            repo.file(owner, f.volume_uuid)
            if owner is not None
            else f"{f.backup_id}/{f.volume_uuid}.qcow2"
        )
        breaks = sorted(
            b
            for b, files in report.broken.items()
            if any(x == f"{f.backup_id}/{f.volume_uuid}" for x in files)
        )
        parts.append(f"{path}: {f.problem} (breaks backups {', '.join(breaks)})")
    return "; ".join(parts)


# The engine as an ExportSource ----------------------------------------------------------


class ContextSource:
    """ExportSource over an OpContext: groups, refs and snapshots from the store, the
    domain's persistent XML from the Hypervisor port, virtual sizes from the images."""

    def __init__(self, ctx: OpContext) -> None:
        self.ctx = ctx

    @property
    def images(self) -> ImageTool:
        return self.ctx.images

    def group(self, group_uuid: str) -> SourceGroup:
        with self.ctx.db.transaction() as session:
            repo = Repo(session)
            row = repo.group(group_uuid)
            if row is None:
                raise NotFound(f"snapshot group {group_uuid} not found")
            (view,) = load_groups(repo, [group_uuid])
            refs = repo.refs_with_snapshots([group_uuid])
            volumes = {v.uuid: v for v in repo.volumes_of_vm(row.vm_uuid)}
            ancestors = _ancestors(repo, row.vm_uuid, group_uuid)
        disks = []
        for ref, snap in sorted(refs, key=lambda rs: rs[0].device_id):
            if snap.deleted or snap.changed:
                why = "deleted" if snap.deleted else f"changed ({snap.changed})"
                raise OperationError(
                    f"group {group_uuid} cannot be exported: its snapshot of volume "
                    f"{ref.volume_uuid} is {why}"
                )
            volume = volumes.get(ref.volume_uuid)
            top = self.ctx.images.chain(snap.install_path, shared=True)[0]
            disks.append(
                SourceDisk(
                    volume_uuid=ref.volume_uuid,
                    device_id=ref.device_id,
                    target=volume.target if volume is not None else f"disk{ref.device_id}",
                    snapshot_file=snap.install_path,
                    virtual_size=top.virtual_size,
                )
            )
        domain = lookup_or_none(self.ctx, row.vm_uuid)
        xml = self.ctx.hv.definition_xml(row.vm_uuid) if domain is not None else ""
        if not xml:
            raise OperationError(
                f"VM {row.vm_uuid} is no longer defined: a backup needs its domain XML"
            )
        return SourceGroup(
            vm_uuid=row.vm_uuid,
            vm_name=domain.name if domain is not None else "",
            group_uuid=group_uuid,
            group_name=row.name,
            create_date=zstack_date(row.create_date),
            inventory=view.to_inventory(),
            domain_xml=xml,
            disks=tuple(disks),
            ancestors=ancestors,
        )

    def snapshot_files(self, group_uuid: str) -> Mapping[str, str]:
        with self.ctx.db.transaction() as session:
            refs = Repo(session).refs_with_snapshots([group_uuid])
        return {
            ref.volume_uuid: snap.install_path
            for ref, snap in refs
            if not snap.deleted and not snap.changed
        }

    def now(self) -> str:
        return self.ctx.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def new_uuid(self) -> str:
        return self.ctx.new_uuid()


def _ancestors(repo: Repo, vm_uuid: str, group_uuid: str) -> tuple[str, ...]:
    """Groups below `group_uuid` in the VM's tree, nearest first: those owning a
    snapshot in its volumes' chains (followed by parent links, as ops/tree.py does)."""
    volumes = repo.volumes_of_vm(vm_uuid)
    snapshots: dict[str, SnapshotRow] = {}
    for lineage in repo.lineages(volumes).values():
        snapshots.update((s.uuid, s) for s in lineage)
    groups = repo.groups(vm_uuid=vm_uuid)
    refs = repo.refs_with_snapshots([g.uuid for g in groups])
    group_of = {snap.uuid: ref.group_uuid for ref, snap in refs if not snap.deleted}
    out: list[str] = []
    for ref, snap in refs:
        if ref.group_uuid != group_uuid:
            continue
        cur: str | None = snap.parent_uuid
        seen: set[str] = set()
        while cur is not None and cur not in seen:
            seen.add(cur)
            found = group_of.get(cur)
            if found is not None and found != group_uuid and found not in out:
                out.append(found)
            row = snapshots.get(cur)
            cur = row.parent_uuid if row is not None else None
    return tuple(out)


# The use cases ---------------------------------------------------------------------------

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


def export(
    ctx: OpContext,
    group_uuid: str,
    *,
    to: str,
    full: bool = False,
    progress: ProgressFn | None = None,
) -> ExportResult:
    """Export the group to the repository at `to`: an increment over the newest export
    of an ancestor group still there and intact, else full (the manifest says why).
    Journaled: a killed export is never listed; recover (or the next export) removes it."""
    uuid = parse_uuid(group_uuid, "group uuid")
    group = ctx.owned_group(uuid)
    store = open_store(ctx, to, existing=False)
    # The VM's lock: no delete may merge away the files being read.
    with vm_lock(group.vm_uuid, wait=ctx.lock_wait):
        backup_id = ctx.new_uuid()
        plan = {"repo": store.root, "vm_uuid": group.vm_uuid, "backup_id": backup_id}
        op = ctx.journal.begin(EXPORT, group.vm_uuid, plan, group_uuid=uuid)
        try:
            result = export_group(
                ContextSource(ctx),
                store,
                uuid,
                full=full,
                progress=progress,
                backup_id=backup_id,
                step=lambda name: ctx.journal.step(op, EXPORT, name),
            )
        except SnapgroupError as exc:
            ctx.journal.close(op, ROLLED_BACK, detail=f"export failed: {exc.details}")
            raise
        ctx.journal.close(op, DONE, detail=f"backup {backup_id} in {store.root}")
    return result


@recovers(EXPORT, without_vm=True)
def recover_export(ctx: OpContext, op: str, plan: dict[str, Any], _domain: DomainInfo) -> None:
    """Published: done. Else the partial is removed: the next export redoes it."""
    store = open_store(ctx, plan["repo"], existing=False)
    try:
        store.get(plan["backup_id"], vm_uuid=plan["vm_uuid"])
    except NotFound:
        store.discard(store.partial(plan["vm_uuid"], plan["backup_id"]))
        ctx.journal.close(op, ROLLED_BACK, detail="export interrupted: its partial removed")
        return
    ctx.journal.close(op, DONE, detail=f"backup {plan['backup_id']} was published")


def backups(ctx: OpContext, *, at: str, vm: str | None = None) -> list[BackupManifest]:
    """The repository's complete backups (of one VM: its name or UUID), oldest first."""
    store = open_store(ctx, at)
    every = store.backups()
    if vm is None:
        return every
    return [m for m in every if m.vm_uuid in _vm_uuids(every, vm)]


def _vm_uuids(every: list[BackupManifest], vm: str) -> set[str]:
    key = vm.replace("-", "").lower()
    uuids = {m.vm_uuid for m in every if m.vm_uuid == key} or {
        m.vm_uuid for m in every if m.vm_name == vm
    }
    if not uuids:
        raise NotFound(f"no backup of VM {vm!r} in the repository")
    if len(uuids) > 1:
        raise InvalidArgument(f"VM name {vm!r} names several VMs' backups: give the UUID")
    return uuids


def verify_backup(ctx: OpContext, *, at: str, backup_id: str | None = None) -> VerifyReport:
    store = open_store(ctx, at)
    return verify_backups(
        ctx.images, store, parse_uuid(backup_id, "backup id") if backup_id else None
    )


@dataclass(frozen=True)
class Restored:
    backup_id: str
    vm_uuid: str | None  # the new VM (None: --to-dir, images only)
    vm_name: str | None
    state: str | None
    files: Mapping[str, str]  # target -> written file
    keep_chain: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "backupId": self.backup_id,
            "vmInstanceUuid": self.vm_uuid,
            "name": self.vm_name,
            "state": self.state,
            "keepChain": self.keep_chain,
            "disks": [{"target": t, "installPath": p} for t, p in sorted(self.files.items())],
        }


DEFAULT_DISK_DIR = "/var/lib/libvirt/images"


def restore(
    ctx: OpContext,
    backup_id: str,
    *,
    source: str,
    as_vm: str | None = None,
    to_dir: str | None = None,
    disk_dir: str | None = None,
    keep_chain: bool = False,
    start: bool = False,
    progress: ProgressFn | None = None,
) -> Restored:
    """Restore any backup: as a new VM `as_vm` (its disks new UUID-named files in
    `disk_dir`, default beside the original VM's disks when it is defined here, else
    /var/lib/libvirt/images), or only its images into `to_dir`. Flattened, or with
    `keep_chain` thin overlays on the repository's files. A damaged chain is refused
    before anything is written. Journaled: a killed restore leaves no VM and no files."""
    if (as_vm is None) == (to_dir is None):
        raise InvalidArgument("restore needs exactly one of --as NEW_VM and --to-dir PATH")
    if start and as_vm is None:
        raise InvalidArgument("--start needs --as NEW_VM")
    store = open_store(ctx, source)
    backup_id = parse_uuid(backup_id, "backup id")
    manifest = _present(ctx.images, store, backup_id)
    restore_id = ctx.new_uuid()  # the new VM's UUID; the journal's lock name
    if as_vm is not None:
        as_vm = validate_name(as_vm)
        if lookup_or_none(ctx, as_vm) is not None:
            raise InvalidArgument(f"a VM named {as_vm!r} already exists")
        directory = disk_dir or _beside_original(ctx, manifest.vm_uuid)
        names = {d.target: f"{ctx.new_uuid()}.qcow2" for d in manifest.disks}
    else:
        assert to_dir is not None
        directory = to_dir
        names = {d.target: d.file for d in manifest.disks}
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise InvalidArgument(f"{directory} is not a directory")
    files = {t: os.path.join(directory, n) for t, n in names.items()}
    for path in files.values():
        if ctx.images.exists(path):
            raise OperationError(f"{path} already exists; refusing to overwrite")
    plan = {
        "repo": store.root,
        "backup_id": backup_id,
        "vm_uuid": restore_id if as_vm else None,
        "name": as_vm,
        "files": files,
    }
    with vm_lock(restore_id, wait=ctx.lock_wait):
        op = ctx.journal.begin(RESTORE, restore_id, plan)
        # The checksums are read while the copies run (both read the same files, mostly
        # from the page cache): a damaged chain's copies are removed and the restore
        # refused all the same, in about the time of the copy alone.
        pool = ThreadPoolExecutor(1, thread_name_prefix="verify")
        checking = pool.submit(verify_backups, ctx.images, store, backup_id)
        try:
            for disk in manifest.disks:
                out = files[disk.target]
                src = store.file(manifest, disk.volume_uuid)
                if keep_chain:
                    ctx.images.create_overlay(out, backing=src, backing_format="qcow2")
                else:
                    ctx.images.flatten(src, out, shared=False, progress=progress)
            report = checking.result()
            if not report.clean:
                raise OperationError(
                    f"backup {backup_id} cannot be restored: {describe(store, report)}"
                )
            ctx.journal.step(op, RESTORE, "written")
            if as_vm is not None:
                ctx.hv.define_restored(
                    manifest.domain_xml, name=as_vm, new_uuid=restore_id, sources=files
                )
                ctx.journal.step(op, RESTORE, "defined")
        except SnapgroupError as exc:
            if as_vm is None or lookup_or_none(ctx, restore_id) is None:
                ctx.remove_files(list(files.values()))
                ctx.journal.close(op, ROLLED_BACK, detail=f"restore failed: {exc.details}")
                raise
        finally:
            pool.shutdown(wait=True)
        ctx.journal.close(op, DONE, detail=f"backup {backup_id} restored")
    state = None
    if as_vm is not None:
        if start:
            ctx.hv.start(restore_id)
        domain = lookup_or_none(ctx, restore_id)
        state = domain.state.value if domain is not None else "Unknown"
    return Restored(backup_id, restore_id if as_vm else None, as_vm, state, files, keep_chain)


def _beside_original(ctx: OpContext, vm_uuid: str) -> str:
    domain = lookup_or_none(ctx, vm_uuid)
    for disk in domain.disks if domain is not None else ():
        if disk.path and disk.path.startswith("/"):
            return os.path.dirname(disk.path)
    return DEFAULT_DISK_DIR


@recovers(RESTORE, without_vm=True)
def recover_restore(ctx: OpContext, op: str, plan: dict[str, Any], _domain: DomainInfo) -> None:
    """Defined: done (its disks are written). Else every file it may have written goes."""
    if plan["vm_uuid"] is not None and lookup_or_none(ctx, plan["vm_uuid"]) is not None:
        ctx.journal.close(op, DONE, detail="restored VM was defined")
        return
    ctx.remove_files(list(plan["files"].values()))
    ctx.journal.close(op, ROLLED_BACK, detail="restore interrupted: its files removed")


# prune ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneReport:
    vm_uuid: str
    pruned: tuple[str, ...]  # backup ids merged into their successors, oldest first
    kept: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "vmInstanceUuid": self.vm_uuid,
            "pruned": list(self.pruned),
            "kept": list(self.kept),
        }


def prune_backups(ctx: OpContext, *, at: str, vm: str, keep: int) -> PruneReport:
    """Keep the VM's `keep` newest backups: each older one is merged into its successors
    (per disk: other children rebased safely onto its base, the first child's clusters
    committed into its file, which then replaces the child's), so every backup left
    reads exactly as before. Journaled; each merge is re-runnable from any point."""
    if keep < 1:
        raise InvalidArgument("--keep must be at least 1")
    store = open_store(ctx, at)
    (vm_uuid,) = _vm_uuids(store.backups(), vm)
    with vm_lock(vm_uuid, wait=ctx.lock_wait):
        op = ctx.journal.begin(
            PRUNE, vm_uuid, {"repo": store.root, "vm_uuid": vm_uuid, "keep": keep}
        )
        try:
            pruned = _prune(ctx, store, op, vm_uuid, keep)
        except SnapgroupError as exc:
            # A merge left hidden is finished by the next prune-backups (each step
            # re-runs safely); until then restore refuses that VM's backups.
            ctx.journal.close(op, FAILED, detail=f"prune failed: {exc.details}")
            raise
        ctx.journal.close(op, DONE, detail=f"pruned {len(pruned)} backups")
    kept = tuple(m.backup_id for m in store.backups(vm_uuid))
    return PruneReport(vm_uuid, tuple(pruned), kept)


@recovers(PRUNE, without_vm=True)
def recover_prune(ctx: OpContext, op: str, plan: dict[str, Any], _domain: DomainInfo) -> None:
    store = open_store(ctx, plan["repo"], existing=False)
    pruned = _prune(ctx, store, op, plan["vm_uuid"], plan["keep"])
    ctx.journal.close(op, DONE, detail=f"recover: pruned {len(pruned)} backups")


def _prune(ctx: OpContext, store: BackupStore, op: str, vm_uuid: str, keep: int) -> list[str]:
    store.discard_partials(vm_uuid)
    done = [_finish_merge(ctx, store, op, m, p) for m, p in store.pending_prunes(vm_uuid)]
    while True:
        listed = store.backups(vm_uuid)
        if len(listed) <= keep:
            return done
        oldest = listed[0]
        plan = _merge_plan(oldest, listed)
        _check_room(ctx, store, oldest, plan)
        ctx.journal.step(op, PRUNE, f"hide {oldest.backup_id}")
        store.hide_for_prune(oldest, plan)
        done.append(_finish_merge(ctx, store, op, oldest, plan))


def _merge_plan(b: BackupManifest, listed: list[BackupManifest]) -> dict[str, Any]:
    """Per disk of `b`: its base, the child whose file takes over b's (the oldest), and
    the other children (rebased onto the base)."""
    disks = []
    for d in b.disks:
        children = [
            m.backup_id
            for m in listed
            if m.backup_id != b.backup_id
            and any(
                x.volume_uuid == d.volume_uuid and x.base_backup_id == b.backup_id for x in m.disks
            )
        ]
        disks.append(
            {
                "volume": d.volume_uuid,
                "base": d.base_backup_id,
                "main": children[0] if children else None,
                "others": children[1:],
            }
        )
    return {"backup": b.backup_id, "disks": disks}


def _check_room(
    ctx: OpContext, store: BackupStore, b: BackupManifest, plan: dict[str, Any]
) -> None:
    """Refuse the merge of `b` before it is hidden when its writes may not fit: a commit
    that runs dry leaves the merge half done (hidden, every later backup unrestorable
    until a prune finishes it). Per disk: the main child's file committed into b's, b's
    file copied into each other child by the safe rebase (upper bounds: whole files)."""
    need = 0
    for disk in plan["disks"]:
        mine = store.file(b, disk["volume"])
        written = ctx.images.chain(mine, shared=True)[0]
        for other in disk["others"]:
            other_file = os.path.join(store.root, b.vm_uuid, other, disk_file(disk["volume"]))
            need += merge_room(store.size(mine), ctx.images.chain(other_file, shared=True)[0])
        if disk["main"] is not None:
            main = os.path.join(store.root, b.vm_uuid, disk["main"], disk_file(disk["volume"]))
            need += merge_room(store.size(main), written)
    free = ctx.images.free_bytes(store.root)
    if need > free:
        raise OperationError(
            f"pruning backup {b.backup_id} may write {need} bytes to the filesystem of "
            f"{store.root} (data and qcow2 metadata), only {free} free (no space left "
            "for the merge): it and its successors are untouched; make room and prune again"
        )


def _finish_merge(
    ctx: OpContext, store: BackupStore, op: str, b: BackupManifest, plan: dict[str, Any]
) -> str:
    """Merge hidden backup `b` into its children; every step is safe to run again."""
    vm = b.vm_uuid

    def path(backup_id: str, volume: str) -> str:
        return os.path.join(store.root, vm, backup_id, f"{volume}.qcow2")

    changed: set[tuple[str, str]] = set()  # (backup, volume) files whose bytes changed
    for disk in plan["disks"]:
        volume, base, main = disk["volume"], disk["base"], disk["main"]
        mine = path(b.backup_id, volume)
        name = backing_name(base, volume) if base else None
        for other in disk["others"]:
            changed.add((other, volume))
            if store.exists(mine):  # gone: the rename below happened, so did this
                ctx.journal.step(op, PRUNE, f"rebase {other}/{volume}")
                ctx.images.set_backing(path(other, volume), backing_name=name, safe=True)
        if main is None:
            continue
        changed.add((main, volume))
        if store.exists(mine):
            ctx.journal.step(op, PRUNE, f"commit {main}/{volume}")
            ctx.images.commit(path(main, volume), base=mine)
            ctx.journal.step(op, PRUNE, f"rename {main}/{volume}")
            store.move_file(mine, path(main, volume))
    ctx.journal.step(op, PRUNE, f"manifests {b.backup_id}")
    for m in store.backups(vm):
        disks = []
        for d in m.disks:
            if b.backup_id not in d.chain:
                disks.append(d)
                continue
            chain = tuple(x for x in d.chain if x != b.backup_id)
            file = store.file(m, d.volume_uuid)
            fresh = (m.backup_id, d.volume_uuid) in changed
            disks.append(
                replace(
                    d,
                    chain=chain,
                    base_backup_id=chain[-2] if len(chain) > 1 else None,
                    sha256=store.sha256(file) if fresh else d.sha256,
                    bytes_written=store.size(file) if fresh else d.bytes_written,
                )
            )
        if tuple(disks) != m.disks:
            store.rewrite_manifest(replace(m, disks=tuple(disks)))
    ctx.journal.step(op, PRUNE, f"remove {b.backup_id}")
    store.remove_backup_dir(vm, b.backup_id)
    return b.backup_id


def policy_export(ctx: OpContext, vm: VmRef, group: AutoGroup, record: PolicyRecord) -> None:
    """A snapshot policy's export (autosnap_port.ExportFn): the group just taken to the
    policy's repository, then that VM's backups there pruned to export_keep (if set)."""
    if not record.export_to:
        return
    export(ctx, group.uuid, to=record.export_to)
    if record.export_keep:
        prune_backups(ctx, at=record.export_to, vm=vm.uuid, keep=record.export_keep)
