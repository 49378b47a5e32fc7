"""Create: the overlays made (all or none), ONE switch of every disk (one atomic libvirt
snapshot, or one defineXML), the group recorded; and the recovery of a create."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime
from typing import Any

from snapgroup.domain.errors import (
    HypervisorUnavailable,
    InvalidArgument,
    OperationError,
    SnapgroupError,
)
from snapgroup.domain.inventory import Group
from snapgroup.domain.models import DiskOverlay, DomainInfo, VmState
from snapgroup.domain.planner import snapshot_name
from snapgroup.ops.consistency import (
    Consistency,
    ConsistencyRecord,
    FreezeWindow,
    interrupted_record,
    known_record,
    thaw_report,
    thaw_with_retries,
)
from snapgroup.ops.context import OpContext
from snapgroup.ops.create_checks import MAX_CHAIN_DEPTH as MAX_CHAIN_DEPTH  # re-exported
from snapgroup.ops.create_checks import check_chain, choose_disks
from snapgroup.ops.group_views import load_groups
from snapgroup.ops.journal import DONE, FAILED, ROLLED_BACK
from snapgroup.ops.memory_state import (
    MemoryOptions,
    memory_columns,
    memory_consistency,
    memory_record,
    plan_memory,
    refuse_stopped,
    refuse_unsaved_disks,
    resume_left_paused,
    settled_domain,
)
from snapgroup.ops.recovery import recovers
from snapgroup.ops.syncing import synced
from snapgroup.store.repo import Repo
from snapgroup.store.volumes import VolumeMove, VolumeTop

CHECK_WORKERS = 8  # a stopped VM's chains: a `qemu-img info` process each


def create_locked(
    ctx: OpContext,
    domain: DomainInfo,
    group_uuid: str,
    name: str,
    description: str | None,
    *,
    skip_unsupported: bool,
    mode: Consistency = Consistency.AUTO,
    marks: dict[str, Any] | None = None,
    memory: MemoryOptions | None = None,
) -> Group:
    """`marks`: extra group columns (a policy's policy, policy_label), recorded with
    the group in its one transaction (and by recovery: they are in the plan).
    `memory`: save the running VM's memory state too (ops/memory_state.py)."""
    if domain.state is VmState.OTHER:
        raise OperationError(f"VM {domain.name} is neither running, paused nor stopped")
    if memory is not None:
        mode = memory_consistency(mode)
        refuse_stopped(domain)
    with synced(ctx, domain) as (repo, found):
        if repo.has_group(group_uuid):
            raise InvalidArgument(f"resourceUuid {group_uuid} is already used by a group")
        chosen = choose_disks(found, skip_unsupported=skip_unsupported)
        if memory is not None:
            refuse_unsaved_disks(found.planned, domain.name)
        chains = repo.chains([found.volumes[t] for t in chosen])  # one query for all
    live = domain.state.is_live

    def check(t: str) -> int:
        return check_chain(ctx, found.volumes[t], live, chains[found.volumes[t].uuid])

    if live or len(chosen) < 2:  # shared reads: QemuImg reads them in-process (qcow2.py)
        sizes = {t: check(t) for t in chosen}
    else:  # a stopped VM's: a `qemu-img info` process each, in parallel (first error wins)
        with ThreadPoolExecutor(max_workers=min(CHECK_WORKERS, len(chosen))) as pool:
            sizes = dict(zip(chosen, pool.map(check, chosen), strict=True))
    overlays = [
        DiskOverlay(
            target=t,
            current=found.volumes[t].install_path,
            overlay=os.path.join(
                os.path.dirname(found.volumes[t].install_path), f"{ctx.new_uuid()}.qcow2"
            ),
        )
        for t in chosen
    ]
    clash = [o.overlay for o in overlays if ctx.images.exists(o.overlay)]
    if clash:  # so recovery may remove every overlay the journal names: all are ours
        raise OperationError(f"overlay path already exists: {', '.join(clash)}")
    plan = {
        "group_uuid": group_uuid,
        "name": name,
        "description": description,
        "live": live,
        "overlays": [asdict(o) for o in overlays],
        "volumes": {t: found.volumes[t].uuid for t in chosen},
        "consistency_mode": mode.value,
    }
    if marks:
        plan["marks"] = marks
    saving: dict[str, Any] | None = None  # the memory file's plan
    if memory is not None:  # checked (running, room) before anything is made or paused
        saving = plan_memory(ctx, domain, found.volumes[chosen[0]].install_path, memory)
        plan["memory"] = saving
    # What recording the group reads of each volume, as synced under this lock (no
    # query after the switch; recovery reads them from the store).
    volumes = {
        v.uuid: VolumeTop(
            v.uuid, v.name, v.device_id, v.volume_type, v.last_attach_date, v.parent_snapshot_uuid
        )
        for v in (found.volumes[t] for t in chosen)
    }
    known = known_record(mode)  # crash: what the group records, journaled from the start
    if known is not None:
        plan["consistency"] = (memory_record() if memory else known).to_plan()
    # The journal's commits are those recovery needs: the plan before anything is made
    # (every overlay named), "freezing" before the agent is asked, the consistency
    # record before the switch (or after the thaw), the end with the group's rows.
    op = ctx.journal.begin("create", domain.uuid, plan, group_uuid=group_uuid)
    try:  # all or none, before any critical window
        ctx.images.create_overlays(overlays, sizes=sizes, backing_format="qcow2")
    except SnapgroupError as exc:
        ctx.journal.close(op, FAILED, detail=exc.details)
        raise
    ctx.journal.point("create", "overlays")  # recovery removes them whether made or not
    # The guest is frozen (when it is) only around the switch: "freezing" is
    # journaled before the agent is asked, so `recover` thaws a guest a killed
    # process left frozen. Nothing is journaled inside the window (it would lengthen
    # it); create:frozen, create:thawing and create:switched are fault-injection
    # points only.
    window = FreezeWindow(
        ctx.hv,
        domain,
        mode,
        timeout=ctx.freeze_timeout,
        on_freezing=lambda: ctx.journal.step(op, "create", "freezing", freezing=True),
    )
    try:
        with window:
            if window.froze:
                ctx.journal.point("create", "frozen")
            elif "consistency" not in plan:  # no freeze (auto fell back): say why first
                assert window.record is not None
                plan["consistency"] = window.record.to_plan()
                ctx.journal.step(op, "create", "switching", consistency=plan["consistency"])
            try:
                _switch(ctx, domain.uuid, live, overlays, saving)
            except HypervisorUnavailable:
                # libvirtd went away (a restart?); when nothing was switched, one more
                # try on a new connection is safe.
                if not _none_switched(ctx, domain.uuid, overlays):
                    raise
                ctx.remove_files(_memory_files(plan))  # a partial save's
                _switch(ctx, domain.uuid, live, overlays, saving)
            if window.froze:
                ctx.journal.point("create", "thawing")
    except SnapgroupError as exc:
        if window.refused is not None:  # application mode, no freeze: nothing switched
            ctx.remove_files([o.overlay for o in overlays])
            ctx.journal.close(op, FAILED, detail=exc.details)
            raise
        if window.record is not None:
            plan["consistency"] = window.record.to_plan()
        # An error does not prove the switch did not happen (libvirtd may have died
        # after doing it): look before removing overlays a running QEMU may be using.
        group = _settle_create(ctx, op, plan, domain.uuid)
        if group is None:
            raise
        return group
    if window.froze:
        assert window.record is not None
        plan["consistency"] = window.record.to_plan()
        ctx.journal.step(op, "create", "thawed", consistency=plan["consistency"])
    ctx.journal.point("create", "switched")
    try:
        return _record_group(ctx, op, plan, domain.uuid, step="switched", known=volumes)
    except SnapgroupError as exc:
        _undo_snapshot(ctx, domain.uuid, live, overlays)
        ctx.remove_files(_memory_files(plan))
        ctx.journal.close(op, ROLLED_BACK, detail=exc.details)
        raise


def _undo_snapshot(
    ctx: OpContext, vm_uuid: str, live: bool, overlays: Sequence[DiskOverlay]
) -> None:
    """Put every disk back on its old top (keeping what was written since), then drop
    the overlays."""
    if live:
        for o in overlays:
            ctx.hv.block_commit(vm_uuid, o.target, top=None, base=o.current)
    else:
        ctx.hv.set_disk_sources(vm_uuid, {o.target: o.current for o in overlays})
    ctx.remove_files([o.overlay for o in overlays])


def _record_group(
    ctx: OpContext,
    op: str,
    plan: dict[str, Any],
    vm_uuid: str,
    *,
    step: str | None = None,
    known: dict[str, VolumeTop] | None = None,
) -> Group:
    """The group, its snapshots and refs, the volumes' new tops and the journal's
    'done' (at `step`, when given): one transaction. `known`: the volumes as the caller
    read them under the VM's lock (else read here)."""
    now = ctx.clock()
    group_uuid, name = plan["group_uuid"], plan["name"]
    consistency = (
        ConsistencyRecord.from_plan(plan["consistency"])
        if "consistency" in plan
        else interrupted_record(froze=False)
    )
    memory = memory_columns(ctx, plan["memory"]) if "memory" in plan else {}
    group = {
        "uuid": group_uuid,
        "name": name,
        "description": plan["description"],
        "vm_uuid": vm_uuid,
        "create_date": now,
        "last_op_date": now,
        "consistency_type": consistency.type.value,
        "frozen_filesystems": json.dumps(list(consistency.frozen_filesystems)),
        "freeze_millis": consistency.freeze_millis,
        "consistency_note": consistency.note,
        "host": ctx.host,
        **plan.get("marks", {}),
        **memory,
    }
    with ctx.db.transaction() as session:
        repo = Repo(session)
        # Column values only, one statement per table (no ORM object, no flush per
        # disk): the group, its snapshots and refs, then the volumes' new tops.
        repo.insert_group(group)
        volumes = repo.volume_tops(plan["volumes"].values()) if known is None else known
        snapshots, refs, tops = _group_rows(plan, volumes, now, ctx.new_uuid)
        repo.insert_snapshots(snapshots, refs)
        repo.move_tops(tops)
        ctx.journal.close(op, DONE, session=session, step=step)
        return load_groups(repo, [group_uuid])[0]


def _switch(
    ctx: OpContext,
    vm_uuid: str,
    live: bool,
    overlays: Sequence[DiskOverlay],
    memory: dict[str, Any] | None = None,
) -> None:
    """Every disk onto its overlay in one step: one atomic libvirt snapshot (running;
    with the memory state when asked) or one defineXML (stopped)."""
    if memory is not None:
        ctx.hv.snapshot_with_memory(vm_uuid, overlays, memory["file"], live=memory["live"])
    elif live:
        ctx.hv.snapshot_disks(vm_uuid, overlays)
    else:
        ctx.hv.set_disk_sources(vm_uuid, {o.target: o.overlay for o in overlays})


def _none_switched(ctx: OpContext, vm_uuid: str, overlays: Sequence[DiskOverlay]) -> bool:
    try:
        paths = {d.target: d.path for d in ctx.hv.lookup(vm_uuid).disks}
    except SnapgroupError:
        return False
    return all(paths.get(o.target) == o.current for o in overlays)


def _settle_create(ctx: OpContext, op: str, plan: dict[str, Any], vm_uuid: str) -> Group | None:
    """After a failed switch: the group when the switch happened after all, None when
    it was rolled back. When even that cannot be seen, the journal stays open and
    `recover` decides later."""
    try:
        domain = ctx.hv.lookup(vm_uuid)
    except SnapgroupError:
        return None
    _recover_create(ctx, op, plan, domain)
    with ctx.db.transaction() as session:
        groups = load_groups(Repo(session), [plan["group_uuid"]])
    return groups[0] if groups else None


@recovers("create")
def _recover_create(ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo) -> None:
    settled = settled_domain(ctx, domain)  # libvirtd may still be at the snapshot
    if settled is None:
        return  # the journal stays open: a later `recover` decides
    domain = settled
    thaw_note = ""
    if plan.get("freezing") and "consistency" not in plan:
        # Killed inside the freeze window: the guest may still be frozen, and every
        # write in it blocked. Thawing is harmless when it is not.
        thawed, error = (
            thaw_with_retries(ctx.hv, domain.uuid, timeout=ctx.freeze_timeout)
            if domain.state.is_live
            else (0, None)
        )
        record = interrupted_record(froze=True, thawed=thawed, thaw_error=error)
        plan = {**plan, "consistency": record.to_plan()}
        thaw_note = f"; {thaw_report(thawed, error)}"
    if "memory" in plan:  # a VM libvirt paused for the save and never resumed runs
        thaw_note += resume_left_paused(ctx, plan["memory"], domain)
        if "consistency" not in plan:
            plan = {**plan, "consistency": memory_record().to_plan()}
    overlays = [DiskOverlay(**o) for o in plan["overlays"]]
    paths = {d.target: d.path for d in domain.disks}
    switched = [o for o in overlays if paths.get(o.target) == o.overlay]
    if overlays and len(switched) == len(overlays):
        _record_group(ctx, op, plan, domain.uuid)  # the snapshot was taken: keep it
        return
    if switched:  # never seen (the switch is atomic) but never left half-done either
        _undo_snapshot(ctx, domain.uuid, domain.state.is_live, switched)
    ctx.remove_files([o.overlay for o in overlays] + _memory_files(plan))
    ctx.journal.close(op, ROLLED_BACK, detail=f"recover: interrupted before the switch{thaw_note}")


def _memory_files(plan: dict[str, Any]) -> list[str]:
    return [plan["memory"]["file"]] if "memory" in plan else []


def _group_rows(
    plan: dict[str, Any],
    volumes: dict[str, VolumeTop],
    now: datetime,
    new_uuid: Callable[[], str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[VolumeMove]]:
    """A new group's snapshot and ref rows, and where each volume's top moves to."""
    snapshots: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    tops: list[VolumeMove] = []
    for o in plan["overlays"]:
        volume = volumes[plan["volumes"][o["target"]]]
        snapshot_uuid = new_uuid()
        snapshots.append(
            {
                "uuid": snapshot_uuid,
                "volume_uuid": volume.uuid,
                "name": snapshot_name(plan["name"], volume.name),
                "install_path": o["current"],
                "parent_uuid": volume.parent_snapshot_uuid,
                "deleted": False,
                "create_date": now,
                "last_op_date": now,
            }
        )
        refs.append(
            {
                "volume_snapshot_uuid": snapshot_uuid,
                "group_uuid": plan["group_uuid"],
                "device_id": volume.device_id,
                "volume_uuid": volume.uuid,
                "volume_name": volume.name,
                "volume_type": volume.volume_type,
                "volume_last_attach_date": volume.last_attach_date,
                "create_date": now,
                "last_op_date": now,
            }
        )
        tops.append(VolumeMove(volume.uuid, o["overlay"], snapshot_uuid, now))
    return snapshots, refs, tops
