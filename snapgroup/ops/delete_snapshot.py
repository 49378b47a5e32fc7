"""Delete one volume snapshot alone.

Deleting one snapshot merges it away exactly like a group delete does (the same plan and
the same re-entrant Merger), then marks it deleted: its group ref stays, with
snapshotDeleted=true, and the group becomes unavailable (`check` says why).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from snapgroup.domain.errors import DeleteFailed, NotFound, OperationError, SnapgroupError
from snapgroup.domain.inventory import DeleteResult
from snapgroup.domain.models import DeleteMode, DomainInfo
from snapgroup.domain.planner import apply_merge, plan_merge
from snapgroup.domain.validate import parse_uuid
from snapgroup.ops.context import OpContext
from snapgroup.ops.delete_plan import protected_error
from snapgroup.ops.journal import DONE, FAILED
from snapgroup.ops.lineage import pinned_snapshots
from snapgroup.ops.merge_checks import (
    PendingMerge,
    check_merge,
    check_space,
    domain_for_delete,
    mark_changed,
)
from snapgroup.ops.merging import Merger, MergeSpec
from snapgroup.ops.recovery import recovers
from snapgroup.ops.syncing import sync_locked
from snapgroup.ports import ProgressFn
from snapgroup.store.repo import Repo

KIND = "delete-snapshot"


def delete_snapshot(
    ctx: OpContext,
    snapshot_uuid: str,
    *,
    mode: DeleteMode | str = DeleteMode.PERMISSIVE,
    progress: ProgressFn | None = None,
) -> DeleteResult:
    """Permissive refuses (OperationError) when the merge cannot or should not be done;
    Enforcing returns a failed result instead. Never breaks a chain in either mode."""
    uuid = parse_uuid(snapshot_uuid, "snapshot uuid")
    mode = DeleteMode.parse(mode)
    with ctx.db.transaction() as session:
        repo = Repo(session)
        snapshot = repo.snapshot(uuid)
        volume = repo.volume(snapshot.volume_uuid) if snapshot is not None else None
    if snapshot is None or volume is None:
        raise NotFound(f"volume snapshot {uuid} not found")
    ctx.check_owner(volume.vm_uuid)
    with ctx.locks.vm(volume.vm_uuid, wait=ctx.lock_wait):
        return _delete_locked(ctx, uuid, volume.vm_uuid, mode, progress)


def _delete_locked(
    ctx: OpContext, uuid: str, vm_uuid: str, mode: DeleteMode, progress: ProgressFn | None
) -> DeleteResult:
    domain = domain_for_delete(ctx, vm_uuid, mode)
    sync_locked(ctx, vm_uuid, domain)
    with ctx.db.transaction() as session:
        repo = Repo(session)
        snapshot = repo.snapshot(uuid)
        assert snapshot is not None
        volume = repo.volume(snapshot.volume_uuid)
        merge = PendingMerge(repo.ref(uuid), snapshot, volume)
        group = repo.group(merge.ref.group_uuid) if merge.ref else None
        if group is not None and group.protected and not snapshot.deleted:
            raise protected_error(group.uuid, group.name)  # under the lock, as delete's
        lineage = repo.lineage(volume) if volume is not None else []
        pinned = pinned_snapshots(repo)
    if snapshot.deleted:
        return DeleteResult(uuid, snapshot.volume_uuid, True)  # deleted before: nothing to do
    check_merge(ctx, merge, domain, lineage, pinned)
    check_space(ctx, [merge], domain is not None and domain.state.is_live, mode)
    problem = merge.blocking or (merge.refusable if mode is DeleteMode.PERMISSIVE else None)
    if problem is not None and mode is DeleteMode.PERMISSIVE:
        raise OperationError(f"cannot delete snapshot: {problem}")
    if merge.plan is None or volume is None or problem is not None:
        return DeleteResult(
            uuid, snapshot.volume_uuid, False, DeleteFailed(problem or "not merged")
        )
    live = domain is not None and domain.state.is_live
    spec = MergeSpec.of(merge.plan, volume.target)
    plan = {"snapshot_uuid": uuid, "live": live, "merge": asdict(spec)}
    group_uuid = merge.ref.group_uuid if merge.ref else None
    op = ctx.journal.begin(KIND, vm_uuid, plan, group_uuid=group_uuid)
    return _finish(ctx, op, vm_uuid, live, spec, progress)


def _finish(
    ctx: OpContext,
    op: str,
    vm_uuid: str,
    live: bool,
    spec: MergeSpec,
    progress: ProgressFn | None,
) -> DeleteResult:
    try:
        Merger(ctx.hv, ctx.images, ctx.journal, kind=KIND).finish(op, vm_uuid, live, spec, progress)
    except SnapgroupError as exc:
        # The Merger leaves a whole tree when it fails; the metadata still describes it,
        # and says so where a commit began writing into the snapshot's file.
        with ctx.db.transaction() as session:
            changed = mark_changed(Repo(session), op, set(), {spec.snapshot_uuid: exc}, ctx.clock())
            ctx.journal.close(op, FAILED, detail=f"merge failed: {exc.details}", session=session)
        what = "merge failed"
        if spec.snapshot_uuid in changed:
            what += f" and its file was changed ({changed[spec.snapshot_uuid]})"
        error = DeleteFailed(f"snapshot {spec.snapshot_uuid}: {what}", cause=exc)
        return DeleteResult(spec.snapshot_uuid, spec.volume_uuid, False, error)
    _record(ctx, op, spec.snapshot_uuid)
    return DeleteResult(spec.snapshot_uuid, spec.volume_uuid, True)


def _record(ctx: OpContext, op: str, uuid: str) -> None:
    """The chain moves, the snapshot marked deleted (its ref says so) and the journal's
    'done': one transaction."""
    now = ctx.clock()
    with ctx.db.transaction() as session:
        repo = Repo(session)
        snapshot = repo.snapshot(uuid)
        volume = repo.volume(snapshot.volume_uuid) if snapshot is not None else None
        if snapshot is not None and volume is not None and not snapshot.deleted:
            plan = plan_merge(volume, repo.lineage(volume), snapshot)
            apply_merge(volume, plan)
            volume.last_op_date = now
            for row in (plan.child_snapshot, *plan.detached):
                if row is not None:
                    row.last_op_date = now
                    repo.add(row)
            snapshot.deleted = True
            snapshot.last_op_date = now
            repo.add(volume, snapshot)
            ref = repo.ref(uuid)
            group = repo.group(ref.group_uuid) if ref is not None else None
            if ref is not None and group is not None:
                ref.last_op_date = group.last_op_date = now
                repo.add(ref, group)
        ctx.journal.close(op, DONE, session=session)


@recovers(KIND)
def recover_delete_snapshot(
    ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo
) -> None:
    """Roll forward: the Merger finishes from whatever step it was cut at."""
    _finish(ctx, op, domain.uuid, domain.state.is_live, MergeSpec(**plan["merge"]), None)
