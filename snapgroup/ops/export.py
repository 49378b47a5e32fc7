"""The backup use cases but restore: export a group (`ContextSource`: the engine as an
ExportSource), list and verify a repository's backups, prune them (the oldest merged
into their successors), and a policy's export. Each locks, journals and recovers;
ops/backing_up.py does the copying and the checks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any

from snapgroup.domain.backup_manifest import (
    PIECE_SIZE,
    BackupManifest,
    DamagedBackup,
    backing_name,
    disk_file,
)
from snapgroup.domain.errors import (
    InvalidArgument,
    NotFound,
    OperationError,
    SnapgroupError,
)
from snapgroup.domain.inventory import zstack_date
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.planner import merge_room
from snapgroup.domain.retention import AutoGroup, VmRef
from snapgroup.domain.validate import parse_uuid
from snapgroup.infra.locks import backups_lock, vm_lock
from snapgroup.ops.backing_up import (
    EXPORT,
    PRUNE,
    ExportResult,
    SourceDisk,
    SourceGroup,
    VerifyReport,
    describe,
    export_group,
    open_store,
    verify_backups,
    vm_uuids,
)
from snapgroup.ops.context import OpContext
from snapgroup.ops.group_views import load_groups
from snapgroup.ops.journal import DONE, FAILED, ROLLED_BACK
from snapgroup.ops.recovery import recovers
from snapgroup.ops.resolve import lookup_or_none
from snapgroup.ports import BackupStore, ImageTool, ProgressFn
from snapgroup.store.policy_repo import PolicyRecord
from snapgroup.store.repo import Repo
from snapgroup.store.tables import SnapshotRow


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


def export(
    ctx: OpContext,
    group_uuid: str,
    *,
    to: str,
    full: bool = False,
    compress: bool = False,
    progress: ProgressFn | None = None,
) -> ExportResult:
    """Export the group to the repository at `to`: an increment over the newest export
    of an ancestor group still there and intact, else full (the manifest says why);
    `compress`: its files' clusters zstd-compressed.
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
                compress=compress,
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
    return [m for m in every if m.vm_uuid in vm_uuids(every, vm)]


def damaged_backups(ctx: OpContext, *, at: str, vm: str | None = None) -> list[DamagedBackup]:
    """The repository's backup directories whose manifest is unreadable or gone (of one
    VM: its UUID, or a name its readable backups give): `backups` does not list them."""
    store = open_store(ctx, at)
    listed, damaged = store.scan()
    if vm is None:
        return damaged
    key = vm.replace("-", "").lower()
    names = {m.vm_uuid for m in listed if m.vm_name == vm}
    return [d for d in damaged if d.vm_uuid == key or d.vm_uuid in names]


def verify_backup(ctx: OpContext, *, at: str, backup_id: str | None = None) -> VerifyReport:
    store = open_store(ctx, at)
    return verify_backups(
        ctx.images, store, parse_uuid(backup_id, "backup id") if backup_id else None
    )


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
    (vm_uuid,) = vm_uuids(store.backups(), vm)
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
    # No restore of these backups reads them while they are merged.
    with backups_lock(vm_uuid, wait=ctx.lock_wait):
        return _prune_held(ctx, store, op, vm_uuid, keep)


def _prune_held(ctx: OpContext, store: BackupStore, op: str, vm_uuid: str, keep: int) -> list[str]:
    store.discard_partials(vm_uuid)
    damaged = store.scan(vm_uuid)[1]
    if damaged:
        # A merge rewrites the chains of every backup on the merged one: with a manifest
        # unreadable, which backups read through which is not known.
        raise OperationError(
            f"VM {vm_uuid} has backups whose manifest is damaged in {store.root}: "
            + "; ".join(f"{d.backup_id}: {d.problem}" for d in damaged)
            + ". Nothing was pruned: restore the manifest, or remove that backup's "
            "directory (it and the backups on it cannot be restored anyway), and prune again"
        )
    done = [_finish_merge(ctx, store, op, m, p) for m, p in store.pending_prunes(vm_uuid)]
    while True:
        listed = store.backups(vm_uuid)
        if len(listed) <= keep:
            return done
        oldest = listed[0]
        plan = _merge_plan(oldest, listed)
        _check_held(ctx, store, oldest)
        _check_intact(ctx, store, oldest, plan)
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


def _check_held(ctx: OpContext, store: BackupStore, b: BackupManifest) -> None:
    """Refuse the merge of `b` while disks restored from it with --keep-chain still read
    its files: the merge writes into them and then removes them. A hold whose disks are
    gone, or no longer on b's files (flattened, rebased), is dropped."""
    ours = {os.path.normpath(store.file(b, d.volume_uuid)) for d in b.disks}
    live: list[str] = []
    for holder, files in store.holds(b).items():
        reading = [f for f in files if _backed_by(ctx, f, ours)]
        if reading:
            live += reading
        else:
            store.release(b, holder)
    if live:
        raise OperationError(
            f"backup {b.backup_id} is the base of disks restored with --keep-chain: "
            f"{', '.join(sorted(live))}. Nothing was pruned: flatten them (the VM stopped: "
            "`qemu-img rebase -b '' FILE`) or remove them, then prune again"
        )


def _backed_by(ctx: OpContext, path: str, files: set[str]) -> bool:
    if not ctx.images.exists(path):
        return False
    try:
        backing = ctx.images.chain(path, shared=True)[0].backing
    except SnapgroupError:
        return True  # unreadable now: it may still be a VM's disk on b's files
    return backing is not None and os.path.normpath(backing) in files


def _check_intact(
    ctx: OpContext, store: BackupStore, b: BackupManifest, plan: dict[str, Any]
) -> None:
    """Refuse the merge of `b` when a file it would write from or into is not what its
    manifest says: the merge recomputes the checksums of the files it writes, so a
    flipped byte merged would be blessed, a kept backup changed without a word."""
    children = sorted({c for d in plan["disks"] for c in (d["main"], *d["others"]) if c})
    for child in children:  # each child's chain holds b
        report = verify_backups(ctx.images, store, child)
        if not report.clean:
            raise OperationError(
                f"pruning backup {b.backup_id} would merge damaged files into the backups "
                f"kept: {describe(store, report)}. Nothing was pruned; `verify-backup` "
                "names every backup each breaks"
            )


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
                    sha256_piece=PIECE_SIZE if fresh else d.sha256_piece,
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
    export(ctx, group.uuid, to=record.export_to, compress=record.export_compress)
    if record.export_keep:
        prune_backups(ctx, at=record.export_to, vm=vm.uuid, keep=record.export_keep)
