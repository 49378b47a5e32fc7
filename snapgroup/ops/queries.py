"""Reads: one group, a VM's (or every) group, a VM's volumes, the journal's latest
operations."""

from __future__ import annotations

from snapgroup.domain.errors import NotFound
from snapgroup.domain.inventory import Group, VolumeView
from snapgroup.domain.validate import parse_uuid
from snapgroup.ops.context import OpContext
from snapgroup.ops.discovery import discover
from snapgroup.ops.group_views import load_groups, load_vm_groups
from snapgroup.store.operations import OperationRepo
from snapgroup.store.repo import Repo
from snapgroup.store.tables import OperationRow


def get(ctx: OpContext, group_uuid: str) -> Group:
    uuid = parse_uuid(group_uuid, "group uuid")
    with ctx.db.transaction() as session:
        groups = load_groups(Repo(session), [uuid])
    if not groups:
        raise NotFound(f"snapshot group {uuid} not found")
    return groups[0]


def list_groups(ctx: OpContext, *, vm: str | None = None) -> list[Group]:
    vm_uuid = ctx.hv.lookup(vm).uuid if vm is not None else None
    with ctx.db.transaction() as session:
        return load_vm_groups(Repo(session), vm_uuid)


def volumes(ctx: OpContext, vm: str) -> list[VolumeView]:
    """The VM's disks as volumes (new ones recorded on the way)."""
    return discover(ctx, ctx.hv.lookup(vm)).views()


def operations(ctx: OpContext, *, limit: int = 100) -> list[OperationRow]:
    with ctx.db.transaction() as session:
        return OperationRepo(session).recent(limit=limit)
