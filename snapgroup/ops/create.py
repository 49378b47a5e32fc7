"""Create a snapshot group of a VM's disks (ZStack's CreateVolumeSnapshotGroup): the
inputs checked, the VM's lock taken, then ops/creating.py does the work."""

from __future__ import annotations

from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.inventory import Group
from snapgroup.domain.validate import parse_uuid, validate_description, validate_name
from snapgroup.ops.consistency import Consistency
from snapgroup.ops.context import OpContext
from snapgroup.ops.creating import create_locked
from snapgroup.ops.discovery import domain_of
from snapgroup.ops.memory_state import MemoryOptions


def create(
    ctx: OpContext,
    *,
    name: str,
    vm: str | None = None,
    root_volume_uuid: str | None = None,
    description: str | None = None,
    resource_uuid: str | None = None,
    skip_unsupported: bool = False,
    consistency: Consistency | str = Consistency.AUTO,
    with_memory: bool = False,
    live: bool = False,
) -> Group:
    """`consistency`: application (freeze the guest's filesystems or fail), crash (no
    freeze) or auto (application when the freeze works, else crash, and why):
    snapgroup.ops.consistency. `with_memory`: the running VM's memory state too, which
    a revert resumes; `live`: the guest runs while most of it is copied
    (snapgroup.ops.memory_state)."""
    if live and not with_memory:
        raise InvalidArgument("--live is for memory groups (--with-memory)")
    memory = MemoryOptions(live=live) if with_memory else None
    name = validate_name(name)
    description = validate_description(description)
    mode = Consistency.parse(consistency)
    group_uuid = parse_uuid(resource_uuid, "resourceUuid") if resource_uuid else ctx.new_uuid()
    domain = domain_of(ctx, vm=vm, root_volume_uuid=root_volume_uuid)
    with ctx.locks.vm(domain.uuid, wait=ctx.lock_wait):
        domain = ctx.hv.lookup(domain.uuid)  # what it is now, under the lock
        return create_locked(
            ctx,
            domain,
            group_uuid,
            name,
            description,
            skip_unsupported=skip_unsupported,
            mode=mode,
            memory=memory,
        )
