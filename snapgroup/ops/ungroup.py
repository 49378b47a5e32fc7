"""Ungroup: drop a group and keep its volume snapshots (ZStack's
UngroupVolumeSnapshotGroup). Metadata only, one transaction; a memory group's memory
file goes with the group (it is the group's VM state, no snapshot's)."""

from __future__ import annotations

from snapgroup.domain.errors import NotFound
from snapgroup.domain.inventory import Group
from snapgroup.domain.validate import parse_uuid
from snapgroup.ops.context import OpContext
from snapgroup.ops.group_views import load_groups
from snapgroup.store.repo import Repo


def ungroup(ctx: OpContext, group_uuid: str) -> Group:
    """The group as it was. Its snapshots stay, as snapshots of their volumes; those
    already deleted had nothing left but their ref, so they go with it."""
    uuid = parse_uuid(group_uuid, "group uuid")
    row = ctx.owned_group(uuid)
    # Under the VM's lock: a revert or delete of this group may be reading its refs.
    with ctx.locks.vm(row.vm_uuid, wait=ctx.lock_wait), ctx.db.transaction() as session:
        repo = Repo(session)
        groups = load_groups(repo, [uuid])
        if not groups:
            raise NotFound(f"snapshot group {uuid} not found")
        repo.delete_snapshots(r.volume_snapshot_uuid for r in groups[0].refs if r.snapshot_deleted)
        if groups[0].memory is not None:
            ctx.remove_files([groups[0].memory.file])
        repo.delete_group(uuid)
        return groups[0]
