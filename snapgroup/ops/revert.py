"""Revert a stopped VM to a group's point in time (ZStack's RevertVmFromSnapshotGroup).

Each restored volume gets a fresh overlay on its snapshot's file and every disk switches
at once: a revert is all or nothing. **ours**: by default a safety group of the current
state is taken first, so a revert never loses anything. Without it, the current data of
each restored volume is discarded. Any group can be reverted to, and the later ones stay
usable: the chains become a tree, whose branches delete merges handle
(planner.plan_merge).

A memory group (ops/memory_state.py) goes back to its running moment: the VM runs (or
stays paused, `paused`) from its saved state, its guest clock then set. A restore that
fails leaves the VM stopped where it was. `volumes` reverts the disks alone (the VM
stays stopped).

Here: what is reverted and whether it may be (the VM stopped, the group available, the
volumes its own). How it runs, its journal and its recovery: ops/reverting.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from snapgroup.domain.errors import InvalidArgument, NotFound, OperationError
from snapgroup.domain.models import DEFAULT_STOP_TIMEOUT, DomainInfo, VmState
from snapgroup.domain.validate import parse_uuid
from snapgroup.ops.availability_rules import availability, file_checker
from snapgroup.ops.context import OpContext
from snapgroup.ops.lineage import check_snapshot_chain
from snapgroup.ops.memory_state import memory_checker
from snapgroup.ops.reverting import Restore, RevertReport, RevertResult, revert_locked
from snapgroup.ops.syncing import sync_locked
from snapgroup.store.repo import Repo

__all__ = ["RevertReport", "RevertResult", "revert", "revert_volume"]


def revert(
    ctx: OpContext,
    group_uuid: str,
    *,
    volumes: Sequence[str] | None = None,
    safety_group: bool = True,
    stop: bool = False,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    paused: bool = False,
) -> RevertReport:
    """`volumes`: restore only these volume UUIDs (the only way to revert to an
    unavailable group); the others are left as they are. `stop`: shut a running VM down
    first (ACPI, powered off after `stop_timeout` seconds), once the group is known to
    be revertible (a damaged one is refused with the VM untouched). A memory group's VM runs
    again from its saved state (`paused`: resumed paused), unless `volumes` is given."""
    uuid = parse_uuid(group_uuid, "group uuid")
    wanted = [parse_uuid(v, "volume uuid") for v in volumes] if volumes is not None else None
    if wanted is not None and not wanted:
        raise InvalidArgument("--volumes names no volume")
    group = ctx.owned_group(uuid)
    memory = None
    if group.memory_file is not None and wanted is None:
        memory = {"file": group.memory_file, "paused": paused}
    elif paused:
        raise InvalidArgument(
            f"--paused resumes a memory group's state: group {uuid} has none"
            if group.memory_file is None
            else "--paused: a revert of --volumes restores disks only, the VM stays stopped"
        )
    with ctx.locks.vm(group.vm_uuid, wait=ctx.lock_wait):
        domain = _defined(ctx, group.vm_uuid)
        if stop and domain.state is not VmState.STOPPED:
            _revertible(ctx, uuid, domain, wanted, memory)  # refused before the stop
        domain = _stopped_domain(ctx, domain, stop, stop_timeout)
        restores = _revertible(ctx, uuid, domain, wanted, memory)
        return revert_locked(ctx, uuid, domain, restores, safety_group, memory)


def _revertible(
    ctx: OpContext,
    uuid: str,
    domain: DomainInfo,
    wanted: list[str] | None,
    memory: dict[str, Any] | None,
) -> list[Restore]:
    """What is restored, once the group may be reverted to: available (its memory file
    what was saved) and, a memory group, its state restorable into the VM as named now
    (libvirt 9.0 restores a saved state only under the name it was saved with)."""
    restores = _choose(ctx, uuid, domain, wanted)
    if memory is not None:
        saved = ctx.hv.saved_domain_name(memory["file"])
        if saved != domain.name:
            raise OperationError(
                f"VM {domain.name} was named {saved!r} when group {uuid} saved its memory "
                f"state, and libvirt restores a saved state only under the name it was "
                f"saved with: rename the VM back while it is stopped (`virsh domrename "
                f"{domain.name} {saved}`) to revert to it, `snapgroup clone --start` the "
                "group to resume it as a new VM, or revert its disks alone (--volumes)"
            )
    return restores


def _defined(ctx: OpContext, vm_uuid: str) -> DomainInfo:
    try:
        return ctx.hv.lookup(vm_uuid)
    except NotFound:
        raise OperationError(
            f"VM {vm_uuid} is no longer defined: its groups cannot be reverted to"
        ) from None


def _stopped_domain(ctx: OpContext, domain: DomainInfo, stop: bool, timeout: float) -> DomainInfo:
    vm_uuid = domain.uuid
    if domain.state is VmState.STOPPED:
        return domain
    if not stop:
        raise OperationError(
            f"VM {domain.name} is {domain.state.value}: a revert needs it stopped "
            "(shut it down, or pass --stop)"
        )
    ctx.hv.shutdown(vm_uuid, timeout=timeout)
    domain = ctx.hv.lookup(vm_uuid)
    if domain.state is not VmState.STOPPED:
        raise OperationError(f"VM {domain.name} is still {domain.state.value} after the stop")
    return domain


def _choose(
    ctx: OpContext, uuid: str, domain: DomainInfo, wanted: list[str] | None
) -> list[Restore]:
    sync_locked(ctx, domain.uuid, domain)
    with ctx.db.transaction() as session:
        repo = Repo(session)
        group = repo.group(uuid)
        if group is None:
            raise NotFound(f"snapshot group {uuid} not found")  # deleted while we waited
        state = availability(
            repo, group, domain, exists=file_checker(ctx), memory=memory_checker(ctx)
        )
        refs = repo.refs_with_snapshots([uuid])
        in_group = {ref.volume_uuid for ref, _ in refs}
        if wanted is None:
            if not state.available:
                raise OperationError(
                    f"group {uuid} is unavailable: {state.reason}; name the volumes to "
                    "restore (--volumes) to revert only those"
                )
            wanted = [ref.volume_uuid for ref, _ in refs]
        unknown = [v for v in wanted if v not in in_group]
        if unknown:
            raise InvalidArgument(f"volume {', '.join(unknown)} is not in group {uuid}")
        problems = [p for v in wanted if (p := state.volumes.get(v))]
        if problems:
            raise OperationError("cannot revert: " + "; ".join(problems))
        restores = []
        for ref, snapshot in refs:
            volume = repo.volume(ref.volume_uuid)
            if ref.volume_uuid in wanted and volume is not None:
                restores.append(Restore(volume, snapshot, repo.lineage(volume)))
    for r in restores:
        check_snapshot_chain(ctx.images, r.snapshot, r.lineage)
    return restores


def revert_volume(ctx: OpContext, snapshot_uuid: str) -> RevertReport:
    """ZStack's RevertVolumeFromSnapshot where a group revert serves it: the snapshot's
    volume alone restored from its group (the VM must be stopped; a safety group of the
    current state first). An ungrouped snapshot is refused (InvalidArgument): snapgroup
    reverts to groups."""
    uuid = parse_uuid(snapshot_uuid, "snapshot uuid")
    with ctx.db.transaction() as session:
        repo = Repo(session)
        snapshot, ref = repo.snapshot(uuid), repo.ref(uuid)
    if snapshot is None or snapshot.deleted:
        raise NotFound(f"volume snapshot {uuid} not found")
    if ref is None:
        raise InvalidArgument(
            f"volume snapshot {uuid} is in no group: only a group's can be reverted to"
        )
    return revert(ctx, ref.group_uuid, volumes=[snapshot.volume_uuid])
