"""Instant recovery: a VM running at once on thin overlays (a --keep-chain restore of a
backup, or a clone of a group), whose disks then become local and standalone in the
background: one libvirt block pull per disk copies everything its backing chain holds
into its overlay, inside QEMU, while the guest runs. When every pull has ended the VM
reads nothing but its own files: the backup's hold is released (prune may merge it
again), a clone's volumes no longer pin the group's snapshots.

The disks are pulled one after another: QEMU 7.2 crashes (a NULL dereference, the
domain gone) when a block-stream job starts while another one runs in the same QEMU,
which the lab showed three times in three parallel tries and never in sequence. So the
copy needs a driver that starts the next pull when one ends: `follow` (the command's
--follow, or the follower process the CLI leaves running in the background), and
`recover`, run first by every command. The operation is journaled (`instant`) and stays
open until the copy is finished: a pull still running is left to run; when none runs
the next disk still on its backing file is pulled; a pull that died with its QEMU (a host
restart) is started again if the VM runs, or, when it is stopped, the disks are made
standalone offline (a safe `qemu-img rebase` onto nothing). At the end QEMU's caches are
flushed (a pause of the guest for the flush: a pulled top's new cluster tables may sit in
QEMU's cache while its header already names no backing file), then the hold goes.

An instant restore starts the VM after the cheap checks of the backup's chain (sizes,
qcow2 headers, backing names: backing_up.chain_problems); reading every byte for the
checksums is the copy's first work (`verify` in the plan), while QEMU pulls the first
disk. Nothing is finished before they match. A mismatch (or a chain that cannot be
read) pauses the guest, stops the pulls and fails the operation, named in its detail
(`snapgroup operations`); the follower exits with that error, a recover says it as a
warning. The VM stays paused on its thin disks, the backup held; nothing is written
into the repository.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from snapgroup.domain.errors import InvalidArgument, OperationError, SnapgroupError
from snapgroup.domain.models import DomainInfo
from snapgroup.ops import notices
from snapgroup.ops.backing_up import describe, open_store, verify_backups
from snapgroup.ops.context import OpContext
from snapgroup.ops.journal import DONE, FAILED, Journal
from snapgroup.ops.pull_room import check_pull_room
from snapgroup.ops.recovery import recovers
from snapgroup.ports import ProgressFn
from snapgroup.store.operations import OperationRepo
from snapgroup.store.repo import Repo

KIND = "instant"
POLL_S = 0.5
PULL_TRIES = 3  # pulls of one disk that may end unfinished before the copy is stalled


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
    bandwidth: int | None = None,
    verify: bool = False,
    start: bool = False,
) -> Copying:
    """Journal the copy of the running VM's `disks`, then start one block pull a disk
    (`bandwidth`: MiB/s each, None: as fast as it goes). `repo`/`backup_id`: the backup
    whose hold (holder: the VM's uuid) is released at the end; `clone_volumes`: target
    -> the clone's volume, unpinned at the end; `verify`: the backup's checksums are
    still to be read (by the driver, before the copy may finish); `start`: the VM is
    started here, once the copy is journaled (a kill after leaves it to recover)."""
    if bandwidth is not None and bandwidth < 1:
        raise InvalidArgument("--bandwidth is in MiB/s: 1 or more")
    plan = {
        "disks": dict(disks),
        "repo": repo,
        "backup_id": backup_id,
        "clone_volumes": dict(clone_volumes or {}),
        "bandwidth": bandwidth,
        "verify": verify and bool(repo and backup_id),
    }
    with ctx.locks.vm(vm_uuid, wait=ctx.lock_wait):  # one driver at a time (recover too)
        check_pull_room(ctx, disks.values(), live=ctx.hv.lookup(vm_uuid).state.is_live)
        op = ctx.journal.begin(KIND, vm_uuid, plan)
        if start:
            ctx.hv.start(vm_uuid)
        done = _drive(ctx, op, plan, ctx.hv.lookup(vm_uuid))
    return Copying(vm_uuid, op, dict(disks), done=done)


def follow(ctx: OpContext, copying: Copying, *, progress: ProgressFn | None = None) -> Copying:
    """Drive the copy to its end (the current pull's progress to `progress`): the
    VM then stands alone. The VM's lock is held meanwhile: recover (in any other
    command) leaves the copy to this driver while it lives."""
    with ctx.locks.vm(copying.vm_uuid, wait=ctx.lock_wait):
        _follow(ctx, copying, progress)
    return Copying(copying.vm_uuid, copying.operation, copying.disks, done=True)


def _follow(ctx: OpContext, copying: Copying, progress: ProgressFn | None) -> None:
    while True:
        plan = _plan(ctx, copying.operation)
        if plan is None:  # finished meanwhile (a recover elsewhere)
            break
        domain = ctx.hv.lookup(copying.vm_uuid)
        refused = _check(ctx, copying.operation, plan, domain)
        if refused is not None:
            raise OperationError(refused)
        if not domain.state.is_live:
            recover_instant(ctx, copying.operation, plan, domain)
            break
        if _drive(ctx, copying.operation, plan, domain):
            break
        if progress is not None:
            for target in sorted(copying.disks):
                job = ctx.hv.block_job(copying.vm_uuid, target)
                if job is not None:
                    progress(job)
        time.sleep(POLL_S)


def _check(ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo) -> str | None:
    """The backup's checksums, when the plan still needs them (an instant restore reads
    them after the start): None when they match (journaled: read once), or nothing
    was to be read. Else the copy is refused: the guest paused, every pull stopped,
    the operation failed; what was wrong and what became of the VM is returned."""
    if not plan.get("verify"):
        return None
    ctx.journal.step(op, KIND, "verify")
    store = open_store(ctx, plan["repo"], existing=False)
    try:
        report = verify_backups(ctx.images, store, plan["backup_id"], memory=False)  # cold
        problem = None if report.clean else describe(store, report)
    except SnapgroupError as exc:  # not read is not checked: refused all the same
        problem = f"its files cannot be checked: {exc.details}"
    if problem is None:
        ctx.journal.step(op, KIND, "verified", verify=False)
        plan["verify"] = False
        return None
    now = "is left stopped, not copied"
    if domain.state.is_live:
        now = _pause_and_stop(ctx, domain.uuid, sorted(plan["disks"]))
    detail = (
        f"instant recovery of backup {plan['backup_id']} refused after the start: "
        f"{problem}. VM {domain.name or domain.uuid} {now}; its disks still read the "
        "repository, which keeps its hold; nothing in the repository was written"
    )
    ctx.journal.close(op, FAILED, detail=detail)
    return detail


def _pause_and_stop(ctx: OpContext, vm_uuid: str, targets: list[str]) -> str:
    """Pause the guest first (it reads no more of what is wrong), then stop every pull;
    what became of it, said (a failure too: the copy is refused all the same)."""
    try:
        ctx.hv.pause(vm_uuid)
    except SnapgroupError as exc:
        return f"could not be paused ({exc.details}): stop it"
    try:
        for target in targets:
            ctx.hv.cancel_block_job(vm_uuid, target)
    except SnapgroupError as exc:
        return f"is paused, its copy not stopped ({exc.details})"
    return "is paused and its copy stopped"


class CopyStalled(OperationError):
    """The copy cannot go on for now (no room, or QEMU keeps ending a pull unfinished):
    the operation stays open, the VM runs on its thin disks; a later follow or
    recover takes it up again."""


def _drive(ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo) -> bool:
    """One step on a running VM: a pull running is left to run; else the next disk
    still on its backing file is pulled (CopyStalled when it would not fit, or after
    PULL_TRIES pulls of it ended unfinished); else the copy is finished. True when done.
    A pull's job gone while its disk still names a backing file ended unfinished: QEMU
    rewrites the header before the job ends (a failed write, ENOSPC, a cancel)."""
    for target in sorted(plan["disks"]):
        if ctx.hv.block_job(domain.uuid, target) is not None:
            return False
    for target, path in sorted(plan["disks"].items()):
        chain = ctx.images.chain(path, shared=True)
        if chain[0].backing is None:
            continue
        pulls: dict[str, int] = plan.get("pulls", {})
        tries = pulls.get(target, 0)
        vm = domain.name or domain.uuid
        if tries >= PULL_TRIES:
            raise CopyStalled(
                f"the copy of VM {vm}'s disk {target} is stalled: QEMU ended its pull "
                f"unfinished {tries} times (libvirt's log says why); it runs on its thin "
                "disks, the operation stays open: `snapgroup recover` tries again"
            )
        try:
            check_pull_room(ctx, [path], live=True)
        except OperationError as exc:
            raise CopyStalled(
                f"the copy of VM {vm}'s disk {target} is stalled: {exc.details}; it runs "
                "on its thin disks, the operation stays open: free space, then "
                "`snapgroup recover` goes on"
            ) from exc
        pulls = {**pulls, target: tries + 1}
        plan["pulls"] = pulls
        ctx.journal.step(op, KIND, f"pull:{target}", pulls=pulls)
        ctx.hv.block_pull(domain.uuid, target, bandwidth=plan.get("bandwidth"))
        return False
    return _finish(ctx, op, plan, domain)


def _plan(ctx: OpContext, op: str) -> dict[str, Any] | None:
    """The copy's plan while it is open, else None."""
    with ctx.db.transaction() as session:
        row = OperationRepo(session).get(op)
    return Journal.plan_of(row) if row is not None and row.state == "running" else None


def _finish(ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo) -> bool:
    """Every disk standalone and durable: release what the thin disks held, close the
    operation. False (nothing done) while a disk still has a backing file or the
    backup's checksums are still to be read."""
    if plan.get("verify"):
        return False
    if domain.state.is_live:  # the pulled clusters' tables may still be in QEMU's cache
        ctx.hv.flush_disks(domain.uuid)
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
    """A running VM: one step of the copy (_drive). A stopped one: every disk still on
    its backing file is made standalone here, offline, and the copy finished. First,
    the backup's checksums when they are still to be read: a mismatch is said as a
    warning (the operation failed, the VM paused)."""
    refused = _check(ctx, op, plan, domain)
    if refused is not None:
        notices.warn(refused)
        return
    if domain.state.is_live:
        try:
            _drive(ctx, op, plan, domain)
        except CopyStalled as exc:  # said at every command while it lasts, and tried again
            notices.warn(exc.details)
            ctx.journal.step(op, KIND, "stalled", pulls={})
        return
    for target, path in sorted(plan["disks"].items()):
        if ctx.images.chain(path)[0].backing is not None:
            ctx.journal.step(op, KIND, f"flatten:{target}")
            ctx.images.set_backing(path, backing_name=None, safe=True)
    _finish(ctx, op, plan, domain)


def follow_operation(ctx: OpContext, op: str, *, progress: ProgressFn | None = None) -> None:
    """The background follower's work: drive operation `op` to its end."""
    plan = _plan(ctx, op)
    if plan is None:
        return
    with ctx.db.transaction() as session:
        row = OperationRepo(session).get(op)
    assert row is not None
    follow(ctx, Copying(row.vm_uuid, op, plan["disks"]), progress=progress)
