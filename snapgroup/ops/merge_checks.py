"""Before and after a snapshot is merged away (a group delete, deleting one snapshot):
whether it may be and whether there is room, its plan and why not; a merge that began
and did not complete marks its snapshot changed."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from snapgroup.domain.errors import NotFound, OperationError, SnapgroupError
from snapgroup.domain.models import ChainSnapshot, DeleteMode, DomainInfo, VmState
from snapgroup.domain.planner import MergePlan, expected_chain, merge_room, plan_merge
from snapgroup.ops.context import OpContext
from snapgroup.ops.merging import merging_into
from snapgroup.store.operations import OperationRepo
from snapgroup.store.repo import Repo
from snapgroup.store.tables import RefRow, SnapshotRow, VolumeRow


@dataclass
class PendingMerge:
    """One snapshot being deleted (with its group ref, if any): what to merge, or why not."""

    ref: RefRow | None
    snapshot: SnapshotRow
    volume: VolumeRow | None
    plan: MergePlan[SnapshotRow] | None = None
    blocking: str | None = None  # never merged, in any mode: it could break the chain
    refusable: str | None = None  # Permissive refuses; Enforcing goes ahead
    room: int = 0  # bytes its merges may write (check_space), for a delete's plan


@dataclass(frozen=True)
class SpaceNeed:
    """One filesystem a delete's merges write to: what they need together, what is free."""

    directory: str
    needed: int
    free: int

    @property
    def fits(self) -> bool:
        return self.needed <= self.free


def domain_for_delete(ctx: OpContext, vm_uuid: str, mode: DeleteMode) -> DomainInfo | None:
    try:
        domain = ctx.hv.lookup(vm_uuid)
    except NotFound:
        if mode is DeleteMode.ENFORCING:
            return None
        raise OperationError(
            f"VM {vm_uuid} no longer exists; Enforcing mode drops the group's metadata "
            "and leaves its files"
        ) from None
    if domain.state is VmState.OTHER:
        raise OperationError(f"VM {domain.name} is neither running, paused nor stopped")
    return domain


def check_merge(
    ctx: OpContext,
    m: PendingMerge,
    domain: DomainInfo | None,
    lineage: Sequence[SnapshotRow],
    pinned: dict[str, str] | None = None,
    *,
    chain: Sequence[ChainSnapshot] | None = None,
) -> None:
    """Fill in m.plan, or the reason it must not (blocking) or should not (refusable)
    be merged. `pinned`: snapshots a clone reads (lineage.pinned_snapshots). `lineage`:
    the volume's; or, with `chain` (Repo.chains), what plan_merge names of it."""
    sid = m.snapshot.uuid
    if m.snapshot.deleted:
        return  # nothing left to merge
    if domain is None:
        m.blocking = f"snapshot {sid}: the VM no longer exists"
        return
    volume = m.volume
    disk = next((d for d in domain.disks if volume and d.target == volume.target), None)
    if volume is None or not volume.attached or disk is None:
        m.blocking = f"snapshot {sid}: its volume is not attached to the VM"
        return
    if disk.path != volume.install_path:
        m.blocking = (
            f"snapshot {sid}: disk {disk.target} is on {disk.path}, "
            f"the metadata says {volume.install_path}"
        )
        return
    try:
        plan = plan_merge(volume, lineage, m.snapshot, pinned=pinned, chain=chain or ())
        # Every file the merge reads or writes, on any branch of the tree: a missing
        # one (moved away behind our back) is that snapshot's failure, not the group's.
        for path in plan_files(plan):
            if not ctx.images.exists(path):
                raise OperationError(f"file {path} is missing")
        verify_real_chain(ctx, volume, lineage if chain is None else chain, domain.state.is_live)
    except SnapgroupError as exc:
        m.blocking = f"snapshot {sid}: {exc.details}"
        return
    m.plan = plan


def check_space(
    ctx: OpContext, merges: Sequence[PendingMerge], live: bool, mode: DeleteMode
) -> list[SpaceNeed]:
    """What every merge of one delete may write to a filesystem (data and qcow2
    metadata: planner.merge_room) must fit in its free space together: a running VM's
    disks merge side by side, a stopped one's before the space of the files removed
    is back. Permissive refuses (refusable, with the figures). Enforcing never starts
    a merge that could run dry halfway (that would change the snapshot's file): it
    starts those that fit, in order, and fails the others with the figures. Returns
    each filesystem's need and free space."""
    demand: dict[int, tuple[str, list[tuple[PendingMerge, int]]]] = {}
    for m in merges:
        if m.plan is None:
            continue
        try:
            for fs, directory, room in merge_room_of(ctx, m.plan, live):
                demand.setdefault(fs, (directory, []))[1].append((m, room))
                m.room += room
        except SnapgroupError as exc:
            m.plan, m.blocking = None, f"snapshot {m.snapshot.uuid}: {exc.details}"
    space: list[SpaceNeed] = []
    for directory, needs in demand.values():
        free = ctx.images.free_bytes(directory)
        total = sum(room for _m, room in needs)
        space.append(SpaceNeed(directory, total, free))
        if total <= free:
            continue
        figures = (
            f"the {len(needs)} merge(s) of this delete writing to the filesystem of "
            f"{directory} need {total} bytes together (data and qcow2 metadata), "
            f"{free} free"
        )
        if mode is DeleteMode.PERMISSIVE:
            for m, _room in needs:
                m.refusable = f"snapshot {m.snapshot.uuid}: {figures}"
            continue
        admitted = 0
        for m, room in needs:
            if m.plan is not None and admitted + room <= free:
                admitted += room
            elif m.plan is not None:
                m.plan = None
                m.blocking = (
                    f"snapshot {m.snapshot.uuid}: not merged, it needs {room} bytes and "
                    f"would not fit ({figures})"
                )
    return space


def merge_room_of(
    ctx: OpContext, plan: MergePlan[SnapshotRow], live: bool
) -> list[tuple[int, str, int]]:
    """(filesystem, directory, bytes) for each file the merge writes into."""
    rooms = []
    for written, source in plan.writes():
        data = ctx.images.chain(source, shared=live)[0].actual_size
        room = merge_room(data, ctx.images.chain(written, shared=live)[0])
        directory = os.path.dirname(written)
        rooms.append((ctx.images.filesystem(directory), directory, room))
    return rooms


def verify_real_chain(
    ctx: OpContext, volume: VolumeRow, chain: Sequence[ChainSnapshot], live: bool
) -> None:
    expected = expected_chain(volume, chain)
    for path in expected:
        if not ctx.images.exists(path):
            raise OperationError(f"file {path} is missing")
    actual = [layer.path for layer in ctx.images.chain(volume.install_path, shared=live)]
    if actual[: len(expected)] != expected:
        raise OperationError(f"real chain {actual} does not match the metadata {expected}")


def plan_files(plan: MergePlan[SnapshotRow]) -> list[str]:
    names = [plan.base, plan.top, *plan.above_all, *plan.detach]
    if plan.parent is not None:
        names.append(plan.parent)
    return list(dict.fromkeys(names))


def changed_reason(base: str, top: str, error: SnapgroupError | None) -> str:
    why = f": {error.details}" if error is not None else ""
    return (
        f"a merge of {top} into this file ({base}) began and did not complete{why}; the "
        "file holds part of that later layer, no longer this snapshot's point in time"
    )


def mark_changed(
    repo: Repo,
    op: str,
    succeeded: set[str],
    errors: dict[str, SnapgroupError | None],
    now: datetime,
) -> dict[str, str]:
    """Mark every snapshot the journal says a commit began writing into (merging_into)
    whose merge did not complete: its file is no longer its point in time. `errors`: why
    each merge failed, where known. Returns uuid -> the reason recorded."""
    plan: dict[str, Any] = json.loads(OperationRepo(repo.session).plan(op) or "{}")
    specs = [*plan.get("merges", ()), *([plan["merge"]] if "merge" in plan else [])]
    tops = {m["snapshot_uuid"]: m["top"] for m in specs}
    changed: dict[str, str] = {}
    for sid, base in merging_into(plan).items():
        if sid in succeeded:
            continue  # the commit completed and the snapshot is gone: nothing stale left
        row = repo.snapshot(sid)
        if row is None or row.deleted:
            continue
        reason = changed_reason(base, tops.get(sid, "a later layer"), errors.get(sid))
        row.changed, row.last_op_date = reason[:4096], now
        repo.add(row)
        changed[sid] = row.changed
    return changed
