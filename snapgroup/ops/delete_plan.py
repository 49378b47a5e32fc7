"""A group delete's plan: what each snapshot's merge would do (or why it would not),
the space it needs per filesystem against what is free, and what would be refused.
`delete` runs exactly this plan; `delete --dry-run` and `autosnap --dry-run` show it
without touching anything (no lock, no sync, no journal)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from snapgroup.domain.errors import OperationError
from snapgroup.domain.models import DeleteMode, DomainInfo
from snapgroup.ops import mount_holds
from snapgroup.ops.context import OpContext
from snapgroup.ops.lineage import pinned_snapshots
from snapgroup.ops.merge_checks import (
    PendingMerge,
    SpaceNeed,
    check_merge,
    check_space,
    domain_for_delete,
)
from snapgroup.store.repo import Repo
from snapgroup.store.snapshots import ChainLink
from snapgroup.store.tables import SnapshotRow


def protected_error(uuid: str, name: str) -> OperationError:
    return OperationError(f"group {uuid} ({name}) is protected; unprotect it first")


@dataclass
class DeletePlan:
    group_uuid: str
    group_name: str
    vm_uuid: str
    mode: DeleteMode
    domain: DomainInfo | None
    merges: list[PendingMerge]
    space: list[SpaceNeed]
    protected: bool
    # A memory group's memory file, removed with the group (its space freed too).
    memory_file: str | None = None
    memory_size: int | None = None
    mounted: tuple[str, ...] = ()  # where `snapgroup mount` serves it now: refused

    def mounted_error(self) -> OperationError:
        return mount_holds.mounted_error(f"group {self.group_uuid}", list(self.mounted))

    @property
    def live(self) -> bool:
        return self.domain is not None and self.domain.state.is_live

    def problems(self) -> list[str]:
        """What the delete would refuse for (Permissive), or fail (Enforcing: blocking)."""
        if self.protected:
            return [protected_error(self.group_uuid, self.group_name).details]
        if self.mounted:
            return [self.mounted_error().details]
        return [p for m in self.merges for p in (m.blocking, m.refusable) if p]

    def refused(self) -> bool:
        """Whether the delete would refuse as a whole, changing nothing."""
        if self.protected or self.mounted:
            return True
        return self.mode is DeleteMode.PERMISSIVE and bool(self.problems())

    def to_json(self) -> dict[str, Any]:
        disks = []
        for m in self.merges:
            p = m.plan
            disks.append(
                {
                    "snapshotUuid": m.snapshot.uuid,
                    "volumeUuid": m.snapshot.volume_uuid,
                    "target": m.volume.target if m.volume else None,
                    "alreadyDeleted": m.snapshot.deleted,
                    "kind": str(p.kind) if p else None,
                    # the heir's file is merged into the snapshot's, which takes its place
                    "mergeFrom": p.top if p else None,
                    "mergeInto": p.base if p else None,
                    "rebased": list(p.detach) if p else [],
                    "live": self.live,
                    "bytes": m.room,
                    "refused": m.blocking or m.refusable,
                }
            )
        return {
            "groupUuid": self.group_uuid,
            "groupName": self.group_name,
            "vmUuid": self.vm_uuid,
            "mode": self.mode.value,
            "live": self.live,
            "protected": self.protected,
            "mounted": list(self.mounted),
            "disks": disks,
            "memoryFile": self.memory_file,
            "memoryBytes": self.memory_size,
            "space": [
                {"directory": s.directory, "needed": s.needed, "free": s.free, "fits": s.fits}
                for s in self.space
            ],
            "wouldRefuse": self.refused(),
            "problems": self.problems(),
        }


def plan_group_delete(
    ctx: OpContext, uuid: str, vm_uuid: str, mode: DeleteMode
) -> DeletePlan | None:
    """The plan of deleting group `uuid` now (None: there is no such group). Reads
    only: the caller holds the VM's lock when it means to run the plan."""
    with ctx.db.transaction() as session:
        repo = Repo(session)
        group = repo.group(uuid)
        if group is None:
            return None
        merges = [
            PendingMerge(ref, snap, repo.volume(snap.volume_uuid))
            for ref, snap in repo.refs_with_snapshots([uuid])
        ]
        chains = repo.chains([m.volume for m in merges if m.volume is not None])
        family = repo.merge_family([m.snapshot for m in merges if not m.snapshot.deleted])
        pinned = pinned_snapshots(repo, _lineage_volumes(repo, merges, chains))
        name, protected = group.name, bool(group.protected)
        memory = (group.memory_file, group.memory_size)
    domain = domain_for_delete(ctx, vm_uuid, mode)
    plan = DeletePlan(uuid, name, vm_uuid, mode, domain, merges, [], protected, *memory)
    plan.mounted = tuple(mount_holds.group_mounts(ctx, uuid))
    if protected or plan.mounted:
        return plan  # refused before anything is read from the files
    for m in merges:
        chain = chains.get(m.snapshot.volume_uuid, [])
        check_merge(ctx, m, domain, family.get(m.snapshot.uuid, []), pinned, chain=chain)
    plan.space = check_space(ctx, merges, plan.live, mode)
    return plan


def _lineage_volumes(
    repo: Repo, merges: Sequence[PendingMerge], chains: dict[str, list[ChainLink]]
) -> list[list[SnapshotRow]]:
    """What pinned_snapshots reads of the volumes' lineages, the set of volumes their
    snapshots belong to, as one snapshot row of each: the volumes with live snapshots of
    their own, and those their chains go on into (a clone's origin)."""
    own = {m.snapshot.volume_uuid: m.snapshot for m in merges}
    found: dict[str, SnapshotRow] = {}
    for link in (link for chain in chains.values() for link in chain):
        if link.volume_uuid in found:
            continue
        row = own.get(link.volume_uuid) or repo.snapshot(link.uuid)
        if row is not None:
            found[link.volume_uuid] = row
    return [list(found.values())]
