"""A new VM from a group's point in time (ZStack's CreateVmInstanceFromVolumeSnapshotGroup),
while the original keeps running.

The clone is defined from the original's persistent definition with a new UUID, new MAC
addresses and, per volume, its own UUID-named overlay on top of the group's snapshot
file. Its volumes are recorded (vm_uuid = the clone, parent_snapshot_uuid = the
snapshot), so every snapshot its disks read is pinned (lineage.pinned_snapshots): a
delete refuses (Permissive) or skips (Enforcing) them, never breaking the clone.

Journal steps (`clone:<step>`): begin -> overlays (made) -> defined (the clone exists)
-> done with its volumes recorded. Recovery rolls forward once the clone is defined,
else removes the overlays.

`start` of a memory group's clone resumes it from a copy of the group's saved state
(ops/memory_copies.py: made under the original's lock, the clone's own, journaled
apart), so the clone runs on from the group's moment instead of booting.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from snapgroup.domain.errors import InvalidArgument, NotFound, OperationError, SnapgroupError
from snapgroup.domain.models import DomainInfo, VolumeType
from snapgroup.domain.planner import volume_name
from snapgroup.domain.validate import parse_uuid, validate_name
from snapgroup.ops.availability_rules import availability, file_checker
from snapgroup.ops.context import OpContext
from snapgroup.ops.journal import DONE, ROLLED_BACK
from snapgroup.ops.lineage import check_snapshot_chain, overlays_on_snapshots
from snapgroup.ops.memory_copies import begin_copy, group_copy, resume_copy
from snapgroup.ops.memory_state import memory_checker
from snapgroup.ops.recovery import recovers
from snapgroup.ops.resolve import lookup_or_none
from snapgroup.ops.syncing import sync_locked
from snapgroup.store.repo import Repo
from snapgroup.store.tables import VolumeRow

KIND = "clone"
_T = TypeVar("_T")


@dataclass(frozen=True)
class CloneDisk:
    target: str
    volume_uuid: str  # the clone's volume
    snapshot_uuid: str  # what it sits on
    install_path: str


@dataclass(frozen=True)
class Clone:
    uuid: str
    name: str
    source_vm_uuid: str
    group_uuid: str
    state: str
    disks: tuple[CloneDisk, ...]
    resumed: bool = False  # started from the memory group's saved state
    note: str | None = None  # what did not go as it should around the resume

    def to_inventory(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "state": self.state,
            "sourceVmInstanceUuid": self.source_vm_uuid,
            "volumeSnapshotGroupUuid": self.group_uuid,
            "volumes": [
                {
                    "uuid": d.volume_uuid,
                    "target": d.target,
                    "installPath": d.install_path,
                    "volumeSnapshotUuid": d.snapshot_uuid,
                }
                for d in self.disks
            ],
            **({"resumedFromMemory": True, "note": self.note} if self.resumed else {}),
        }


def clone(ctx: OpContext, group_uuid: str, *, name: str, start: bool = False) -> Clone:
    """Define (and with `start`, start) a new VM named `name` from the group. The group
    must be available: the clone gets exactly the original's devices, every writable
    disk on the group's point in time."""
    uuid = parse_uuid(group_uuid, "group uuid")
    name = validate_name(name)
    group = ctx.owned_group(uuid)
    # The original's lock: no delete may merge the snapshots away before the clone's
    # volumes (which pin them) are recorded.
    memory = group.memory_file if start else None
    with contextlib.ExitStack() as clone_held:
        with ctx.locks.vm(group.vm_uuid, wait=ctx.lock_wait):
            copy = group_copy(ctx, group) if memory is not None else None  # refused: none made
            made = _clone_locked(ctx, uuid, group.vm_uuid, name)
            if memory is not None and copy is not None:
                # The state's copy is journaled as the clone's: the clone's lock until it
                # resumed, or a `recover` elsewhere would take the copy for a dead one's.
                clone_held.enter_context(ctx.locks.vm(made.uuid, wait=ctx.lock_wait))
                resuming = _not_resumed(made, lambda: begin_copy(ctx, made.uuid, memory, copy))
        if not start:
            return made
        if copy is None:
            ctx.hv.start(made.uuid)
            return _described(ctx, made)
        sources = {d.target: d.install_path for d in made.disks}
        note = _not_resumed(made, lambda: resume_copy(ctx, resuming, copy, made.uuid, sources))
        return replace(_described(ctx, made), resumed=True, note=note)


def _not_resumed(made: Clone, step: Callable[[], _T]) -> _T:
    """`step`'s result; its error said as the clone's, made (defined, stopped) but not
    resumed."""
    try:
        return step()
    except SnapgroupError as exc:
        raise OperationError(
            f"clone {made.name} ({made.uuid}) was made but not resumed from the group's "
            f"memory state ({exc.details}): `virsh start` boots it, or delete it",
            cause=exc,
        ) from exc


def _clone_locked(ctx: OpContext, uuid: str, vm_uuid: str, name: str) -> Clone:
    domain = lookup_or_none(ctx, vm_uuid)
    if domain is None:
        raise OperationError(f"VM {vm_uuid} is no longer defined: there is nothing to clone")
    if lookup_or_none(ctx, name) is not None:
        raise InvalidArgument(f"a VM named {name!r} already exists")
    sync_locked(ctx, vm_uuid, domain)
    with ctx.db.transaction() as session:
        repo = Repo(session)
        group = repo.group(uuid)
        if group is None:
            raise NotFound(f"snapshot group {uuid} not found")
        state = availability(
            repo, group, domain, exists=file_checker(ctx), memory=memory_checker(ctx)
        )
        if not state.available:
            raise OperationError(
                f"group {uuid} is unavailable, it cannot be cloned: {state.reason}"
            )
        sources = []
        for ref, snapshot in repo.refs_with_snapshots([uuid]):
            volume = repo.volume(ref.volume_uuid)
            assert volume is not None
            sources.append((volume, snapshot, repo.lineage(volume)))
    clone_uuid = ctx.new_uuid()
    disks: list[dict[str, Any]] = []
    for volume, snapshot, lineage in sources:
        check_snapshot_chain(ctx.images, snapshot, lineage)
        disks.append(
            {
                "target": volume.target,
                "device_id": volume.device_id,
                "volume_type": volume.volume_type,
                "volume_uuid": ctx.new_uuid(),
                "snapshot_uuid": snapshot.uuid,
                "snapshot_path": snapshot.install_path,
                "overlay": os.path.join(
                    os.path.dirname(snapshot.install_path), f"{ctx.new_uuid()}.qcow2"
                ),
            }
        )
    plan = {"clone_uuid": clone_uuid, "name": name, "group_uuid": uuid, "disks": disks}
    op = ctx.journal.begin(KIND, vm_uuid, plan, group_uuid=uuid)
    try:
        overlays_on_snapshots(ctx, disks)
        ctx.journal.step(op, KIND, "overlays")
        ctx.hv.define_clone(
            vm_uuid,
            name=name,
            new_uuid=clone_uuid,
            sources={d["target"]: d["overlay"] for d in disks},
        )
    except SnapgroupError:
        # defineXML is one call; when it failed the clone may still exist (libvirtd
        # died after it): look before removing overlays a domain may name.
        recover_clone(ctx, op, plan, domain)
        if lookup_or_none(ctx, clone_uuid) is None:
            raise
    else:
        ctx.journal.step(op, KIND, "defined")
        try:
            _record(ctx, op, plan)
        except SnapgroupError as exc:
            _undo(ctx, op, plan, exc)
            raise
    return _described(ctx, _clone_of(plan, vm_uuid, "Stopped"))


def _record(ctx: OpContext, op: str, plan: dict[str, Any]) -> None:
    """The clone's volumes (which pin the snapshots) and the journal's 'done'."""
    now = ctx.clock()
    with ctx.db.transaction() as session:
        repo = Repo(session)
        for d in plan["disks"]:
            if repo.volume(d["volume_uuid"]) is not None:
                continue
            repo.add(
                VolumeRow(
                    uuid=d["volume_uuid"],
                    vm_uuid=plan["clone_uuid"],
                    vm_name=plan["name"],
                    target=d["target"],
                    device_id=d["device_id"],
                    volume_type=d["volume_type"],
                    name=volume_name(plan["name"], VolumeType(d["volume_type"]), d["target"]),
                    install_path=d["overlay"],
                    format="qcow2",
                    parent_snapshot_uuid=d["snapshot_uuid"],
                    host=ctx.host,  # defined in this host's libvirt
                    attached=True,
                    last_attach_date=now,
                    create_date=now,
                    last_op_date=now,
                )
            )
        ctx.journal.close(op, DONE, session=session)


def _undo(ctx: OpContext, op: str, plan: dict[str, Any], exc: SnapgroupError) -> None:
    with contextlib.suppress(NotFound):
        ctx.hv.undefine(plan["clone_uuid"])
    ctx.remove_files([d["overlay"] for d in plan["disks"]])
    ctx.journal.close(op, ROLLED_BACK, detail=f"clone not recorded: {exc.details}")


@recovers(KIND)
def recover_clone(ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo) -> None:
    """Forward when the clone was defined, else drop its overlays."""
    if lookup_or_none(ctx, plan["clone_uuid"]) is not None:
        _record(ctx, op, plan)
        return
    ctx.remove_files([d["overlay"] for d in plan["disks"]])
    ctx.journal.close(op, ROLLED_BACK, detail="clone: rolled back before the definition")


def _clone_of(plan: dict[str, Any], vm_uuid: str, state: str) -> Clone:
    return Clone(
        uuid=plan["clone_uuid"],
        name=plan["name"],
        source_vm_uuid=vm_uuid,
        group_uuid=plan["group_uuid"],
        state=state,
        disks=tuple(
            CloneDisk(d["target"], d["volume_uuid"], d["snapshot_uuid"], d["overlay"])
            for d in plan["disks"]
        ),
    )


def _described(ctx: OpContext, made: Clone) -> Clone:
    domain = lookup_or_none(ctx, made.uuid)
    state = domain.state.value if domain is not None else "Unknown"
    return Clone(made.uuid, made.name, made.source_vm_uuid, made.group_uuid, state, made.disks)
