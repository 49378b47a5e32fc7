"""Instant recovery: a VM running at once on thin overlays (a --keep-chain restore of a
backup, or a clone of a group), whose disks then become local and standalone in the
background: one libvirt block pull per disk copies everything its backing chain holds
into its overlay, inside QEMU, while the guest runs. When every pull has ended the VM
reads nothing but its own files: the backup's hold is released (prune may merge it
again), a clone's volumes no longer pin the group's snapshots.

The copy is QEMU's work, not this process's: the command answers as soon as the VM runs,
and a snapgroup killed meanwhile (kill -9) stops nothing. The operation is journaled
(`instant`) and stays open until the copy is finished; `recover` (run first by every
command) finishes it: pulls still running are left to run; ended ones are checked (the
top stands alone); a pull that died with its QEMU (a host restart) is started again if
the VM runs, or, when it is stopped, the disk is made standalone offline (a safe
`qemu-img rebase` onto nothing: every cluster of the chain copied into the top).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from snapgroup.domain.errors import OperationError
from snapgroup.domain.models import BlockJobProgress, DomainInfo
from snapgroup.ops.backing_up import open_store
from snapgroup.ops.context import OpContext
from snapgroup.ops.journal import DONE, Journal
from snapgroup.ops.recovery import recovers
from snapgroup.ports import ProgressFn
from snapgroup.store.operations import OperationRepo
from snapgroup.store.repo import Repo

KIND = "instant"
POLL_S = 0.5


@dataclass(frozen=True)
class Copying:
    """The background copy of an instant VM's disks."""

    vm_uuid: str
    operation: str  # the journal's operation (snapgroup operations)
    disks: Mapping[str, str]  # target -> the disk's file, standalone once copied
    done: bool = False  # every disk already standalone (follow, or nothing to copy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "operationUuid": self.operation,
            "copying": not self.done,
            "disks": [{"target": t, "installPath": p} for t, p in sorted(self.disks.items())],
        }


def start_copy(
    ctx: OpContext,
    vm_uuid: str,
    disks: Mapping[str, str],
    *,
    repo: str | None = None,
    backup_id: str | None = None,
    clone_volumes: Mapping[str, str] | None = None,
) -> Copying:
    """Journal the copy of the running VM's `disks`, then start one block pull a disk.
    `repo`/`backup_id`: the backup whose hold (holder: the VM's uuid) is released at
    the end; `clone_volumes`: target -> the clone's volume, unpinned at the end."""
    plan = {
        "disks": dict(disks),
        "repo": repo,
        "backup_id": backup_id,
        "clone_volumes": dict(clone_volumes or {}),
    }
    op = ctx.journal.begin(KIND, vm_uuid, plan)
    for target in sorted(disks):
        ctx.journal.step(op, KIND, f"pull:{target}")
        ctx.hv.block_pull(vm_uuid, target)
    ctx.journal.step(op, KIND, "pulling")
    return Copying(vm_uuid, op, dict(disks))


def follow(ctx: OpContext, copying: Copying, *, progress: ProgressFn | None = None) -> Copying:
    """Wait for the copy to end (the pulls' progress, all disks together, to
    `progress`), then finish it: the VM stands alone."""
    while True:
        jobs = [ctx.hv.block_job(copying.vm_uuid, t) for t in sorted(copying.disks)]
        running = [j for j in jobs if j is not None]
        if not running:
            break
        if progress is not None:
            progress(BlockJobProgress(sum(j.cur for j in running), sum(j.end for j in running)))
        time.sleep(POLL_S)
    domain = ctx.hv.lookup(copying.vm_uuid)
    plan = _plan(ctx, copying.operation)
    if not _finish(ctx, copying.operation, plan, domain):
        raise OperationError(
            f"the copy of VM {copying.vm_uuid}'s disks ended but a disk still reads its "
            "backing file: `snapgroup recover` starts it again"
        )
    return Copying(copying.vm_uuid, copying.operation, copying.disks, done=True)


def _plan(ctx: OpContext, op: str) -> dict[str, Any]:
    with ctx.db.transaction() as session:
        row = OperationRepo(session).get(op)
    assert row is not None
    return Journal.plan_of(row)


def _finish(ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo) -> bool:
    """Every disk standalone: release what the thin disks held, close the operation.
    False (nothing done) while a disk still has a backing file."""
    for path in plan["disks"].values():
        if ctx.images.chain(path, shared=domain.state.is_live)[0].backing is not None:
            return False
    if plan.get("repo") and plan.get("backup_id"):
        store = open_store(ctx, plan["repo"], existing=False)
        manifest = store.get(plan["backup_id"])
        store.release(manifest, domain.uuid)
    if plan.get("clone_volumes"):
        _unpin(ctx, list(plan["clone_volumes"].values()))
    ctx.journal.close(op, DONE, detail="every disk is local and standalone")
    return True


def _unpin(ctx: OpContext, volume_uuids: list[str]) -> None:
    """A clone's volumes read the group's snapshots no more: they pin nothing."""
    now = ctx.clock()
    with ctx.db.transaction() as session:
        repo = Repo(session)
        for uuid in volume_uuids:
            volume = repo.volume(uuid)
            if volume is None:
                continue
            volume.parent_snapshot_uuid = None
            volume.last_op_date = now
            repo.add(volume)


@recovers(KIND)
def recover_instant(ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo) -> None:
    """Pulls running: left to run (the operation stays open). Ended: finished. A pull
    lost with its QEMU: started again on a running VM; on a stopped one the disk is
    made standalone here, offline."""
    pending = False
    for target, path in sorted(plan["disks"].items()):
        if domain.state.is_live:
            if ctx.hv.block_job(domain.uuid, target) is not None:
                pending = True
                continue
            if ctx.images.chain(path, shared=True)[0].backing is not None:
                ctx.hv.block_pull(domain.uuid, target)
                ctx.journal.step(op, KIND, f"pull:{target}")
                pending = True
        elif ctx.images.chain(path)[0].backing is not None:
            ctx.journal.step(op, KIND, f"flatten:{target}")
            ctx.images.set_backing(path, backing_name=None, safe=True)
    if not pending:
        _finish(ctx, op, plan, domain)
