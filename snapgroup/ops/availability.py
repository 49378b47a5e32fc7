"""Can a group still be reverted to? ZStack's CheckVolumeSnapshotGroupAvailability.

A group is unavailable when one of its snapshots was deleted, one of its volumes is no
longer attached, or a volume attached now is not in it (reverting would leave that
volume in the present while the others go back), and when its VM is gone. Also when a
file a revert would read is not there: a snapshot's file or any file of its recorded
backing chain (on whichever branch of the tree it is), or when one of those snapshots
is marked changed (a merge into its file failed midway: it no longer holds its point
in time). Files are only looked for (a stat each), not opened: revert and clone read
the real chain before they build on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from snapgroup.domain.errors import NotFound
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.validate import parse_uuid
from snapgroup.ops.availability_rules import Availability, availability, file_checker
from snapgroup.ops.context import OpContext
from snapgroup.ops.memory_state import memory_checker
from snapgroup.ops.resolve import lookup_or_none
from snapgroup.ops.syncing import sync_locked
from snapgroup.store.repo import Repo


def check(ctx: OpContext, group_uuids: Sequence[str]) -> list[Availability]:
    """Availability of each group, in the order given; NotFound for an unknown group."""
    uuids = [parse_uuid(u, "group uuid") for u in group_uuids]
    with ctx.db.transaction() as session:
        rows = {u: Repo(session).group(u) for u in uuids}
    missing = [u for u, row in rows.items() if row is None]
    if missing:
        raise NotFound(f"snapshot group {', '.join(missing)} not found")
    domains: dict[str, DomainInfo | None] = {}
    for row in rows.values():
        assert row is not None
        if row.vm_uuid not in domains:
            domains[row.vm_uuid] = _synced_domain(ctx, row.vm_uuid)
    results = []
    exists = file_checker(ctx)  # one stat per file however many groups read it
    memory = memory_checker(ctx)
    with ctx.db.transaction() as session:
        repo = Repo(session)
        for uuid in uuids:
            group = repo.group(uuid)
            assert group is not None
            domain = domains[group.vm_uuid]
            results.append(availability(repo, group, domain, exists=exists, memory=memory))
    return results


def _synced_domain(ctx: OpContext, vm_uuid: str) -> DomainInfo | None:
    """The VM's domain after a sync. A query does not wait for a busy VM: when another
    operation holds its lock, the metadata is read as recorded."""
    domain = lookup_or_none(ctx, vm_uuid)
    with ctx.locks.try_vm(vm_uuid) as free:
        if not free:
            return domain
        domain = lookup_or_none(ctx, vm_uuid)  # what it is now, under the lock
        sync_locked(ctx, vm_uuid, domain)
        return domain
