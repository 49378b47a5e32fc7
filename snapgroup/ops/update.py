"""Rename a group or change its description (ZStack's UpdateVolumeSnapshotGroup).
Metadata only, one transaction."""

from __future__ import annotations

from snapgroup.domain.errors import NotFound
from snapgroup.domain.inventory import Group
from snapgroup.domain.validate import parse_uuid, validate_description, validate_name
from snapgroup.ops.context import OpContext
from snapgroup.ops.group_views import load_groups
from snapgroup.store.repo import Repo


def update(
    ctx: OpContext, group_uuid: str, *, name: str | None = None, description: str | None = None
) -> Group:
    uuid = parse_uuid(group_uuid, "group uuid")
    if name is not None:
        name = validate_name(name)
    description = validate_description(description)
    with ctx.db.transaction() as session:
        repo = Repo(session)
        row = repo.group(uuid)
        if row is None:
            raise NotFound(f"snapshot group {uuid} not found")
        ctx.check_owner(row.vm_uuid, repo)
        if name is not None:
            row.name = name
        if description is not None:
            row.description = description
        row.last_op_date = ctx.clock()
        repo.add(row)
        return load_groups(repo, [uuid])[0]
