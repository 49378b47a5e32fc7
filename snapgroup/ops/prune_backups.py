"""prune-backups: keep a VM's N newest backups in a repository, each older one merged
into its successors so that every backup left reads exactly as before. Journaled, and
re-runnable from any step; it refuses, changing nothing, while a manifest of the VM is
damaged, a file it would merge is not what its manifest says, a thin restore still
reads the backup, or the merge may not fit (ops/backing_up.py checks the files)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from snapgroup.domain.backup_manifest import PIECE_SIZE, BackupManifest, backing_name
from snapgroup.domain.errors import InvalidArgument, OperationError, SnapgroupError
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.planner import merge_room
from snapgroup.ops import mount_holds
from snapgroup.ops.backing_up import PRUNE, describe, open_store, verify_backups, vm_uuids
from snapgroup.ops.context import OpContext
from snapgroup.ops.journal import DONE, FAILED
from snapgroup.ops.recovery import recovers
from snapgroup.ports import BackupStore


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
    with ctx.locks.vm(vm_uuid, wait=ctx.lock_wait):
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
    with ctx.locks.backups(vm_uuid, wait=ctx.lock_wait):
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
    mount_holds.check_backup(ctx, store, b)  # a `snapgroup mount` reading it
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
            other_file = store.member_file(b.vm_uuid, other, disk["volume"])
            need += merge_room(store.size(mine), ctx.images.chain(other_file, shared=True)[0])
        if disk["main"] is not None:
            main = store.member_file(b.vm_uuid, disk["main"], disk["volume"])
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
        return store.member_file(vm, backup_id, volume)

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
                d.replace(
                    chain=chain,
                    base_backup_id=chain[-2] if len(chain) > 1 else None,
                    sha256=store.sha256(file) if fresh else d.sha256,
                    sha256_piece=PIECE_SIZE if fresh else d.sha256_piece,
                    bytes_written=store.size(file) if fresh else d.bytes_written,
                )
            )
        if tuple(disks) != m.disks:
            store.rewrite_manifest(m.replace(disks=tuple(disks)))
    ctx.journal.step(op, PRUNE, f"remove {b.backup_id}")
    store.remove_backup_dir(vm, b.backup_id)
    return b.backup_id
