"""Delete: check (Permissive refuses), merge each snapshot out of its chain, record;
and the recovery of a delete."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

from snapgroup.domain.errors import (
    DeleteFailed,
    NotFound,
    OperationError,
    SnapgroupError,
)
from snapgroup.domain.inventory import DeleteReport, DeleteResult
from snapgroup.domain.models import DeleteMode, DomainInfo
from snapgroup.domain.planner import (
    MergePlan,
    apply_merge,
    plan_merge,
)
from snapgroup.domain.validate import parse_uuid
from snapgroup.ops.context import OpContext
from snapgroup.ops.delete_plan import DeletePlan, plan_group_delete, protected_error
from snapgroup.ops.journal import DONE
from snapgroup.ops.merge_checks import PendingMerge, mark_changed
from snapgroup.ops.merging import Merger, MergeSpec
from snapgroup.ops.recovery import recovers
from snapgroup.ops.syncing import sync_locked
from snapgroup.ports import ProgressFn
from snapgroup.store.repo import Repo
from snapgroup.store.tables import SnapshotRow, VolumeRow


class DeleteRefused(OperationError):
    """A Permissive delete refused before changing anything. `report`: every ref's
    result, each saying why (the report's error is this one)."""

    def __init__(self, details: str, group_uuid: str, results: Sequence[DeleteResult]) -> None:
        super().__init__(details)
        self.report = DeleteReport(group_uuid, tuple(results), refusal=self)


def delete(
    ctx: OpContext,
    group_uuid: str,
    *,
    mode: DeleteMode | str = DeleteMode.PERMISSIVE,
    progress: ProgressFn | None = None,
) -> DeleteReport:
    uuid = parse_uuid(group_uuid, "group uuid")
    mode = DeleteMode.parse(mode)
    with ctx.db.transaction() as session:
        group = Repo(session).group(uuid)
    if group is None:
        return DeleteReport(uuid, ())  # idempotent, as in ZStack
    ctx.check_owner(group.vm_uuid)
    with ctx.locks.vm(group.vm_uuid, wait=ctx.lock_wait):
        return _delete_locked(ctx, uuid, group.vm_uuid, mode, progress)


def plan(
    ctx: OpContext, group_uuid: str, *, mode: DeleteMode | str = DeleteMode.PERMISSIVE
) -> DeletePlan:
    """`delete --dry-run`: the plan the delete would run now, nothing touched (no
    lock, no sync: the metadata as recorded against the files as they are)."""
    uuid = parse_uuid(group_uuid, "group uuid")
    mode = DeleteMode.parse(mode)
    group = ctx.owned_group(uuid)
    found = plan_group_delete(ctx, uuid, group.vm_uuid, mode)
    if found is None:
        raise NotFound(f"snapshot group {uuid} not found")
    return found


def _delete_locked(
    ctx: OpContext, uuid: str, vm_uuid: str, mode: DeleteMode, progress: ProgressFn | None
) -> DeleteReport:
    try:
        sync_locked(ctx, vm_uuid, ctx.hv.lookup(vm_uuid))
    except NotFound:
        sync_locked(ctx, vm_uuid, None)
    plan_ = plan_group_delete(ctx, uuid, vm_uuid, mode)
    if plan_ is None:
        return DeleteReport(uuid, ())  # deleted while we waited for the lock
    if plan_.protected:  # read under the lock: protect and delete never cross
        raise protected_error(uuid, plan_.group_name)
    if plan_.mounted:  # read under the lock, as `snapgroup mount` records its mounts
        raise plan_.mounted_error()
    merges, live = plan_.merges, plan_.live
    if plan_.refused():
        raise _refused(uuid, merges, plan_.problems())
    specs = {
        m.snapshot.uuid: MergeSpec.of(m.plan, m.volume.target)
        for m in merges
        if m.plan is not None and m.volume is not None
    }
    plan = {
        "group_uuid": uuid,
        "mode": mode.value,
        "live": live,
        "merges": [asdict(spec) for spec in specs.values()],
        "noop": [m.snapshot.uuid for m in merges if m.snapshot.deleted],
        "total": len(merges),
        "memory_file": plan_.memory_file,  # removed with the group
    }
    op = ctx.journal.begin("delete", vm_uuid, plan, group_uuid=uuid)
    merged = _run_merges(ctx, op, vm_uuid, live, list(specs.values()), progress)
    results = []
    for m in merges:
        if m.snapshot.deleted:
            results.append(DeleteResult(m.snapshot.uuid, m.snapshot.volume_uuid, True))
        elif m.snapshot.uuid not in merged:
            error = DeleteFailed(m.blocking or "not merged")
            results.append(DeleteResult(m.snapshot.uuid, m.snapshot.volume_uuid, False, error))
        else:
            results.append(merged[m.snapshot.uuid])
    succeeded = [r.snapshot_uuid for r in results if r.success]
    changed = _record_delete(ctx, op, uuid, succeeded, len(merges), mode, merged, plan_.memory_file)
    return DeleteReport(uuid, tuple(_name_changed(r, changed, uuid) for r in results))


def _run_merges(
    ctx: OpContext,
    op: str,
    vm_uuid: str,
    live: bool,
    specs: Sequence[MergeSpec],
    progress: ProgressFn | None,
) -> dict[str, DeleteResult]:
    """Every merge's result by snapshot uuid. Live, the disks merge side by side
    (Merger.finish_many); offline one after another, since each merge rewrites the
    persistent definition (set_disk_sources), which would race."""
    if not live or len(specs) < 2 or len({s.target for s in specs}) < len(specs):
        return {s.snapshot_uuid: _run_merge(ctx, op, vm_uuid, live, s, progress) for s in specs}
    merger = Merger(ctx.hv, ctx.images, ctx.journal)
    errors = merger.finish_many(op, vm_uuid, live, specs, progress)
    return {s.snapshot_uuid: _result(s, errors[s.snapshot_uuid]) for s in specs}


def _run_merge(
    ctx: OpContext, op: str, vm_uuid: str, live: bool, spec: MergeSpec, progress: ProgressFn | None
) -> DeleteResult:
    try:
        Merger(ctx.hv, ctx.images, ctx.journal).finish(op, vm_uuid, live, spec, progress)
    except SnapgroupError as exc:
        return _result(spec, exc)
    return _result(spec, None)


def _record_delete(
    ctx: OpContext,
    op: str,
    uuid: str,
    succeeded: Sequence[str],
    total: int,
    mode: DeleteMode,
    merged: dict[str, DeleteResult] | None = None,
    memory_file: str | None = None,
) -> dict[str, str]:
    """One transaction: chain moves of the merged snapshots, their rows, the group,
    the snapshots whose files a merge that did not complete wrote into (marked
    changed; returned: uuid -> reason), and the journal's 'done'. A memory group's
    memory file goes first when the group goes (a kill between leaves the group
    without it, unavailable, and `recover` finishes the delete)."""
    if memory_file and (mode is DeleteMode.ENFORCING or len(succeeded) == total):
        ctx.remove_files([memory_file])
    now = ctx.clock()
    with ctx.db.transaction() as session:
        repo = Repo(session)
        causes = {u: r.error.cause if r.error else None for u, r in (merged or {}).items()}
        changed = mark_changed(repo, op, set(succeeded), causes, now)
        rows = {s.uuid: s for s in repo.snapshots_with_volumes(succeeded)}
        snapshots = [rows[u] for u in succeeded if u in rows and not rows[u].deleted]
        planned = _Planned(repo, snapshots)
        moved: list[VolumeRow | SnapshotRow] = []
        for snapshot in snapshots:
            volume = repo.volume(snapshot.volume_uuid)
            assert volume is not None
            plan = planned.plan(volume, snapshot)
            apply_merge(volume, plan)
            volume.last_op_date = now
            moved.append(volume)
            if plan.child_snapshot is not None:
                plan.child_snapshot.last_op_date = now
                moved.append(plan.child_snapshot)
        repo.add(*moved)  # one flush: the UPDATEs of like rows go out as one batch
        repo.delete_snapshots(succeeded)
        group = repo.group(uuid)
        if group is not None:
            if mode is DeleteMode.ENFORCING or len(succeeded) == total:
                repo.delete_group(uuid)
            else:
                group.last_op_date = now
                repo.add(group)
        ctx.journal.close(op, DONE, session=session)
    return changed


@recovers("delete")
def _recover_delete(ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo) -> None:
    """Runs the planned merges again: a commit cut short is finished now; one that
    fails again leaves its snapshot marked changed (_record_delete)."""
    live = domain.state.is_live
    specs = [MergeSpec(**m) for m in plan["merges"]]
    merged = _run_merges(ctx, op, domain.uuid, live, specs, None)
    succeeded = [*plan["noop"], *(u for u, r in merged.items() if r.success)]
    _record_delete(
        ctx,
        op,
        plan["group_uuid"],
        succeeded,
        plan["total"],
        DeleteMode.parse(plan["mode"]),
        merged,
        plan.get("memory_file"),
    )


class _Planned:
    """plan_merge for snapshots recorded one after another in one transaction, on the
    chains and merge families of all read at once. A volume met again is read again:
    the merge applied before changed its chain."""

    def __init__(self, repo: Repo, snapshots: Sequence[SnapshotRow]) -> None:
        self.repo = repo
        volumes = [v for s in snapshots if (v := repo.volume(s.volume_uuid)) is not None]
        self.chains = repo.chains(volumes)
        self.family = repo.merge_family(snapshots)
        self.seen: set[str] = set()

    def plan(self, volume: VolumeRow, snapshot: SnapshotRow) -> MergePlan[SnapshotRow]:
        if volume.uuid in self.seen:
            self.chains[volume.uuid] = self.repo.chains([volume])[volume.uuid]
            self.family.update(self.repo.merge_family([snapshot]))
        self.seen.add(volume.uuid)
        family = self.family[snapshot.uuid]
        return plan_merge(volume, family, snapshot, chain=self.chains[volume.uuid])


def _refused(uuid: str, merges: Sequence[PendingMerge], problems: Sequence[str]) -> DeleteRefused:
    """Permissive's refusal: nothing was done; each ref's result says why, or that it
    was not attempted because of the others."""
    results = []
    for m in merges:
        sid, vid = m.snapshot.uuid, m.snapshot.volume_uuid
        if m.snapshot.deleted:
            results.append(DeleteResult(sid, vid, True))
            continue
        reason = (
            m.blocking
            or m.refusable
            or (
                f"snapshot {sid}: not attempted: Permissive refused the group delete "
                "(see the other snapshots' results), nothing was changed"
            )
        )
        results.append(DeleteResult(sid, vid, False, DeleteFailed(reason)))
    return DeleteRefused("cannot delete group: " + "; ".join(problems), uuid, results)


def _name_changed(result: DeleteResult, changed: dict[str, str], group: str) -> DeleteResult:
    """A failed result whose snapshot's file was written into says so: the group is no
    longer a valid restore point."""
    reason = changed.get(result.snapshot_uuid)
    if reason is None or result.success:
        return result
    error = DeleteFailed(
        f"snapshot {result.snapshot_uuid}: merge failed and its file was changed ({reason}); "
        f"group {group} is no longer a valid restore point",
        cause=result.error.cause if result.error else None,
    )
    return replace(result, error=error)


def _result(spec: MergeSpec, error: SnapgroupError | None) -> DeleteResult:
    if error is None:
        return DeleteResult(spec.snapshot_uuid, spec.volume_uuid, True)
    failed = DeleteFailed(f"snapshot {spec.snapshot_uuid}: merge failed", cause=error)
    return DeleteResult(spec.snapshot_uuid, spec.volume_uuid, False, failed)
