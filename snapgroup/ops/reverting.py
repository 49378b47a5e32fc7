"""A revert as it runs, is journaled and is recovered (shared machinery: ops/revert.py
decides what to restore and calls revert_locked under the VM's lock; the facade and the
CLI read its RevertReport).

Each restored volume gets a fresh UUID-named overlay on its snapshot's file; every disk
switches in ONE defineXML, so a revert is all or nothing. A safety group, when asked for,
is the ordinary offline create (in the same lock); the old top it leaves (an empty
overlay) is then removed. A memory group's VM is restored from its saved state onto the
new overlays once the definition is switched, its guest clock then set through the agent;
a restore that fails puts the definition back and drops the overlays.

Journal steps (`revert:<step>`, each a fault-injection point):
begin -> safety (a safety group is about to be taken) -> overlays (made; the old tops
are recorded) -> switched (the domain is on the new overlays) -> [restoring (a memory
group's state is being restored)] -> removed (old tops gone) -> done, with the
metadata. Recovery rolls forward once the domain is switched (restoring a memory state
first when the VM is still stopped), and back (dropping the new overlays) before that;
but a memory revert killed before its switch is finished (its safety group settled or
taken, the overlays made again): its VM was stopped for it, and a rollback would leave
it stopped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from snapgroup.domain.errors import OperationError, SnapgroupError
from snapgroup.domain.inventory import Group
from snapgroup.domain.models import DomainInfo, VmState
from snapgroup.domain.validate import NAME_MAX
from snapgroup.ops.context import OpContext
from snapgroup.ops.creating import create_locked
from snapgroup.ops.journal import DONE, ROLLED_BACK
from snapgroup.ops.lineage import overlays_on_snapshots
from snapgroup.ops.memory_state import (
    Resumed,
    after_resume,
    clock_setter,
    resume_state,
    settled_domain,
)
from snapgroup.ops.recovery import recover_one, recovers
from snapgroup.store.operations import OperationRepo
from snapgroup.store.repo import Repo
from snapgroup.store.tables import OperationRow, SnapshotRow, VolumeRow

KIND = "revert"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RevertResult:
    volume_uuid: str
    snapshot_uuid: str
    success: bool
    error: SnapgroupError | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "volumeUuid": self.volume_uuid,
            "snapshotUuid": self.snapshot_uuid,
            "success": self.success,
            "error": self.error.to_dict() if self.error else None,
        }


@dataclass(frozen=True)
class RevertReport:
    group_uuid: str
    results: tuple[RevertResult, ...]
    safety_group: Group | None = None
    # A memory group's: the VM's state once resumed (Running / Paused), and what did not
    # go as it should around it (the guest clock not set...).
    resumed: str | None = None
    note: str | None = None

    @property
    def error(self) -> OperationError | None:
        failed = [r for r in self.results if not r.success]
        if not failed:
            return None
        return OperationError(
            f"{len(failed)} of {len(self.results)} volumes were not reverted to group "
            f"{self.group_uuid}",
            cause=failed[0].error,
        )

    def to_response(self) -> dict[str, Any]:
        response: dict[str, Any] = {
            "results": [r.to_dict() for r in self.results],
            "safetyGroupUuid": self.safety_group.uuid if self.safety_group else None,
        }
        if self.resumed is not None:  # a memory group's
            response["resumed"] = self.resumed
            response["note"] = self.note
        if (error := self.error) is not None:
            response["error"] = error.to_dict()
        return response


@dataclass(frozen=True)
class Restore:
    """One volume to restore: its row, the snapshot it goes back to, its lineage."""

    volume: VolumeRow
    snapshot: SnapshotRow
    lineage: list[SnapshotRow]


def revert_locked(
    ctx: OpContext,
    uuid: str,
    domain: DomainInfo,
    restores: list[Restore],
    safety: bool,
    memory: dict[str, Any] | None = None,
) -> RevertReport:
    vm_uuid = domain.uuid
    disks = [
        {
            "target": r.volume.target,
            "volume_uuid": r.volume.uuid,
            "snapshot_uuid": r.snapshot.uuid,
            "snapshot_path": r.snapshot.install_path,
            "overlay": os.path.join(
                os.path.dirname(r.volume.install_path), f"{ctx.new_uuid()}.qcow2"
            ),
        }
        for r in restores
    ]
    safety_uuid = ctx.new_uuid() if safety else None
    plan: dict[str, Any] = {
        "group_uuid": uuid,
        "safety_group_uuid": safety_uuid,
        "disks": disks,
        "old_tops": None,  # known once the safety group is taken
    }
    if memory is not None:
        plan["memory"] = memory
    op = ctx.journal.begin(KIND, vm_uuid, plan, group_uuid=uuid)
    safety_group: Group | None = None
    try:
        if safety_uuid is not None:
            ctx.journal.step(op, KIND, "safety")
            safety_group = _take_safety_group(ctx, domain, uuid, safety_uuid)
        tops = {d.target: d.path for d in ctx.hv.lookup(vm_uuid).disks}
        plan["old_tops"] = {d["target"]: tops.get(d["target"]) for d in disks}
        overlays_on_snapshots(ctx, disks)
        ctx.journal.step(op, KIND, "overlays", old_tops=plan["old_tops"])
        ctx.hv.set_disk_sources(vm_uuid, {d["target"]: d["overlay"] for d in disks})
    except SnapgroupError as exc:
        if not _settle(ctx, op, plan, vm_uuid):
            return _failed(uuid, disks, exc, safety_group)
    else:
        ctx.journal.step(op, KIND, "switched")
        if memory is not None and (error := _resume(ctx, op, plan, vm_uuid)) is not None:
            return _failed(uuid, disks, error, safety_group)
        # The guest clock is set while the old files go and the rows are updated.
        clock = clock_setter(ctx, vm_uuid, memory) if memory and not memory["paused"] else None
        try:
            _roll_forward(ctx, op, plan)
        except BaseException:
            if clock is not None:
                clock()  # its agent call ends under the VM's lock, whatever happened
            raise
    results = tuple(RevertResult(d["volume_uuid"], d["snapshot_uuid"], True) for d in disks)
    if memory is None:
        return RevertReport(uuid, results, safety_group)
    note = clock() if clock is not None else after_resume(ctx, vm_uuid, memory)
    resumed = VmState.PAUSED if memory["paused"] else VmState.RUNNING
    return RevertReport(uuid, results, safety_group, resumed.value, note)


def _failed(
    uuid: str, disks: list[dict[str, Any]], error: SnapgroupError, safety: Group | None
) -> RevertReport:
    results = (RevertResult(d["volume_uuid"], d["snapshot_uuid"], False, error) for d in disks)
    return RevertReport(uuid, tuple(results), safety)


def _resume(ctx: OpContext, op: str, plan: dict[str, Any], vm_uuid: str) -> SnapgroupError | None:
    """A switched memory revert's VM started from the group's saved state. None: it
    runs. Else the error, once the revert is rolled back (or left to `recover` when the
    VM cannot even be looked at)."""
    ctx.journal.step(op, KIND, "restoring")
    disks: list[dict[str, Any]] = plan["disks"]
    old = {t: p for t, p in (plan["old_tops"] or {}).items() if p is not None}
    sources = {d["target"]: d["overlay"] for d in disks}
    outcome, error = resume_state(ctx, vm_uuid, plan["memory"], sources, old)
    if outcome is Resumed.ROLLED_BACK:
        ctx.remove_files([d["overlay"] for d in disks])
        detail = f"revert: the memory state was not restored ({error}); the disks are back"
        ctx.journal.close(op, ROLLED_BACK, detail=detail)
    return error


def _take_safety_group(ctx: OpContext, domain: DomainInfo, uuid: str, safety_uuid: str) -> Group:
    with ctx.db.transaction() as session:
        group = Repo(session).group(uuid)
    target_name = group.name if group is not None else uuid
    name = f"before revert to {target_name}"[:NAME_MAX]
    description = f"taken by `snapgroup revert` before VM {domain.name} went back to group {uuid}"
    # The VM's lock is already held by this process: the create runs inside it.
    return create_locked(
        ctx, ctx.hv.lookup(domain.uuid), safety_uuid, name, description, skip_unsupported=True
    )


def _settle(ctx: OpContext, op: str, plan: dict[str, Any], vm_uuid: str) -> bool:
    """After a failure: finish the revert when the switch happened after all (True), else
    roll it back (False). When the domain cannot even be read, `recover` decides later."""
    try:
        domain = ctx.hv.lookup(vm_uuid)
    except SnapgroupError:
        return False
    _recover(ctx, op, plan, domain, finish=False)  # this process's failure: not retried
    if "memory" not in plan:
        return _switched(plan, domain)
    try:  # a memory state that could not be restored rolled the revert back
        return _switched(plan, ctx.hv.lookup(vm_uuid))
    except SnapgroupError:
        return False


def _switched(plan: dict[str, Any], domain: DomainInfo) -> bool:
    paths = {d.target: d.path for d in domain.disks}
    return bool(plan["disks"]) and all(
        paths.get(d["target"]) == d["overlay"] for d in plan["disks"]
    )


@recovers(KIND)
def recover_revert(ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo) -> None:
    """Forward once the domain is on the new overlays (one defineXML: all or none are),
    else back. The safety group is its own journaled create: kept if it was taken. A
    memory group's VM still stopped is first started from its saved state; one killed
    before its switch is finished (the VM was stopped for it, its running state gone)."""
    _recover(ctx, op, plan, domain, finish=True)


def _recover(
    ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo, *, finish: bool
) -> None:
    if "memory" in plan:  # libvirtd may still be at the restore a killed process asked
        settled = settled_domain(ctx, domain)
        if settled is None:
            return  # the journal stays open: a later `recover` decides
        domain = settled
    if not _switched(plan, domain):
        ctx.remove_files([d["overlay"] for d in plan["disks"]])
        memory = finish and "memory" in plan and not domain.state.is_live
        if not memory or not _switch_now(ctx, op, plan, domain):
            ctx.journal.close(op, ROLLED_BACK, detail="revert: rolled back before the switch")
            return
    if "memory" in plan and _resume(ctx, op, plan, domain.uuid) is not None:
        return
    _roll_forward(ctx, op, plan)
    if "memory" in plan:
        after_resume(ctx, domain.uuid, plan["memory"])  # best effort, as after a revert


def _switch_now(ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo) -> bool:
    """A memory revert killed before its switch: the VM is stopped already (its running
    state is gone), so rather than leave it stopped the revert is finished: its safety
    group settled (its own create, journaled after this revert) or taken now, the
    overlays made again, the disks switched. False (nothing switched, the overlays
    removed) when that fails: the revert is rolled back."""
    disks: list[dict[str, Any]] = plan["disks"]
    with ctx.db.transaction() as session:  # in flight here now: a sync leaves it alone
        OperationRepo(session).update(op, {"pid": os.getpid()})
    try:
        domain = _safety_settled(ctx, plan, domain)
        tops = {d.target: d.path for d in domain.disks}
        plan["old_tops"] = {d["target"]: tops.get(d["target"]) for d in disks}
        overlays_on_snapshots(ctx, disks)
        ctx.journal.step(op, KIND, "overlays", old_tops=plan["old_tops"])
        ctx.hv.set_disk_sources(domain.uuid, {d["target"]: d["overlay"] for d in disks})
    except SnapgroupError as exc:
        log.warning("revert %s not finished by recover (%s): rolled back", op, exc.details)
        ctx.remove_files([d["overlay"] for d in disks])
        return False
    ctx.journal.step(op, KIND, "switched")
    return True


def _safety_settled(ctx: OpContext, plan: dict[str, Any], domain: DomainInfo) -> DomainInfo:
    """The revert's safety group, when it asked for one, recorded (its interrupted
    create recovered first, or the group taken now): the present is never dropped by
    finishing a revert. The domain as it is then."""
    safety_uuid = plan.get("safety_group_uuid")
    if safety_uuid is None:
        return domain

    def open_creates() -> list[OperationRow]:
        with ctx.db.transaction() as session:
            rows = OperationRepo(session).unfinished(host=ctx.journal.host)
        return [r for r in rows if r.kind == "create" and r.group_uuid == safety_uuid]

    for row in open_creates():
        recover_one(ctx, row)
    if open_creates():
        raise OperationError(f"the safety group {safety_uuid} is still being taken")
    with ctx.db.transaction() as session:
        taken = Repo(session).has_group(safety_uuid)
    if not taken:
        _take_safety_group(ctx, domain, plan["group_uuid"], safety_uuid)
    return ctx.hv.lookup(domain.uuid)


def _roll_forward(ctx: OpContext, op: str, plan: dict[str, Any]) -> None:
    disks: list[dict[str, Any]] = plan["disks"]
    old_tops: dict[str, str | None] = plan["old_tops"] or {}
    with ctx.db.transaction() as session:
        repo = Repo(session)
        # Never remove a file a snapshot or another volume still names.
        kept = repo.all_install_paths() - {
            v.install_path for d in disks if (v := repo.volume(d["volume_uuid"])) is not None
        }
    ctx.remove_files(
        [
            p
            for d in disks
            if (p := old_tops.get(d["target"])) and p != d["overlay"] and p not in kept
        ]
    )
    ctx.journal.step(op, KIND, "removed")
    now = ctx.clock()
    with ctx.db.transaction() as session:
        repo = Repo(session)
        for d in disks:
            volume = repo.volume(d["volume_uuid"])
            assert volume is not None
            volume.install_path = d["overlay"]
            volume.parent_snapshot_uuid = d["snapshot_uuid"]
            volume.last_op_date = now
            repo.add(volume)
        group = repo.group(plan["group_uuid"])
        if group is not None:
            group.last_op_date = now
            repo.add(group)
        ctx.journal.close(op, DONE, session=session)
