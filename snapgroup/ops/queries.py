"""Reads: one group, a VM's (or every) group, a page of groups by ZStack's query (selected
and counted in SQL by store/group_query.py; only the page's groups loaded with their
refs), a VM's volumes, the host's VMs, the journal's latest operations."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from snapgroup.domain.errors import HypervisorError, HypervisorUnavailable, NotFound, OperationError
from snapgroup.domain.inventory import Group, VolumeView
from snapgroup.domain.validate import parse_uuid
from snapgroup.domain.zquery import Query
from snapgroup.ops.context import OpContext
from snapgroup.ops.discovery import discover
from snapgroup.ops.group_views import (
    documents_of_rows,
    groups_of_rows,
    load_groups,
    load_vm_groups,
)
from snapgroup.store import group_query
from snapgroup.store.base import DateParser
from snapgroup.store.db import Database
from snapgroup.store.operations import OperationRepo
from snapgroup.store.repo import Repo
from snapgroup.store.resource_rows import all_volumes
from snapgroup.store.tables import OperationRow, VolumeRow


@dataclass(frozen=True)
class GroupPage:
    """A page of groups as the store returned them (Repo.group_views rows, their refs'
    Repo.ref_views rows): REST replies straight from the rows, the CLI's table from
    Group objects made on demand."""

    views: list[Sequence[Any]]
    ref_rows: list[Sequence[Any]]
    dates: Callable[[], DateParser]  # a reader of the rows' raw dates (made when needed)
    total: int | None  # how many matched, when count or replyWithCount asked

    @property
    def groups(self) -> list[Group]:
        return groups_of_rows(self.views, self.ref_rows, self.dates())

    def reply(self, query: Query) -> dict[str, Any]:
        """The REST reply document: {"inventories": [...]} (+ "total"), or {"total"}."""
        documents = documents_of_rows(self.views, self.ref_rows, self.dates)
        return query.reply(documents, self.total)


def query_groups(db: Database, query: Query) -> GroupPage:
    """The page (its groups and their refs, read at one moment) and the total, each one
    read outside a transaction: a count asked beside a page may see a later moment, as
    ZStack's separate count does."""
    with db.read() as conn:
        views, ref_rows = group_query.page(conn, query)
        total = group_query.total(conn, query)
        return GroupPage(views, ref_rows, functools.partial(DateParser, conn.dialect), total)


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


@dataclass(frozen=True)
class VmInstance:
    """A VM as QueryVmInstance shows it: libvirt's domain and state now, with its
    attached volumes (by deviceId) when the store records the VM; none when it does not.
    `state` is "Destroyed" for a recorded VM libvirt no longer has, "Unknown" for every
    recorded VM while libvirt does not answer."""

    uuid: str
    name: str
    state: str
    volumes: tuple[VolumeRow, ...]


def vm_instances(ctx: OpContext) -> list[VmInstance]:
    """Every domain libvirt has on this host, and the VMs of this host the store records
    that it no longer has; by UUID. A recorded VM's disks are discovered again (a new
    disk recorded, as `volumes` does); an unrecorded VM is only shown: nothing recorded."""
    recorded: dict[str, list[VolumeRow]] = {}
    with ctx.db.transaction() as session:
        for row in all_volumes(session):
            if row.host in (None, ctx.host):  # other hosts' VMs are theirs to show
                recorded.setdefault(row.vm_uuid, []).append(row)
    found: dict[str, VmInstance] = {}
    try:
        listed = ctx.hv.list_vms()
    except (HypervisorUnavailable, HypervisorError):
        listed = []  # the store still answers for the VMs it records
        unknown = "Unknown"
    else:
        unknown = "Destroyed"  # ZStack's word for a VM that is gone
    for uuid, _name in listed:
        try:
            domain = ctx.hv.lookup(uuid)
        except NotFound:
            continue  # undefined since it was listed
        volumes: tuple[VolumeRow, ...] = ()
        if uuid in recorded:
            try:
                discovered = list(discover(ctx, domain).volumes.values())
            except OperationError:  # recorded by another host of a shared store
                discovered = []
            volumes = tuple(sorted(discovered, key=lambda v: v.device_id))
        found[uuid] = VmInstance(uuid, domain.name, domain.state.value, volumes)
    for uuid, rows in recorded.items():
        if uuid not in found:
            attached = tuple(r for r in rows if r.attached)
            found[uuid] = VmInstance(uuid, rows[-1].vm_name, unknown, attached)
    return [found[u] for u in sorted(found)]
