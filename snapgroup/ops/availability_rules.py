"""Whether a group can still be reverted to, and why not (`check`, revert and clone ask).

A group is unavailable when one of its snapshots was deleted, one of its volumes is no
longer attached, or a volume attached now is not in it (reverting would leave that
volume in the present while the others go back), and when its VM is gone. Also when a
file a revert would read is not there: a snapshot's file or any file of its recorded
backing chain (on whichever branch of the tree it is), or when its own snapshot is
marked changed (a merge into its file failed midway: it no longer holds its point in
time; the groups above it read through the merged child, which still holds that
data). Files are only looked for (a stat each), not opened: revert and clone read the
real chain before they build on it. A memory group is unavailable too when its memory
file is gone or not what was saved (memory_state.memory_checker: its checksum).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from snapgroup.domain.models import DomainInfo
from snapgroup.domain.planner import classify
from snapgroup.ops.context import OpContext
from snapgroup.ops.memory_state import MemoryCheck
from snapgroup.store.repo import Repo
from snapgroup.store.tables import GroupRow, RefRow, SnapshotRow


@dataclass(frozen=True)
class Availability:
    uuid: str
    available: bool
    reason: str | None
    # volume uuid -> why its snapshot cannot be restored (None: it can)
    volumes: dict[str, str | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "available": self.available, "reason": self.reason}


def file_checker(ctx: OpContext) -> Callable[[str], bool]:
    """ctx.images.exists, each path looked at once per call of the caller."""
    seen: dict[str, bool] = {}

    def exists(path: str) -> bool:
        if path not in seen:
            seen[path] = ctx.images.exists(path)
        return seen[path]

    return exists


def availability(
    repo: Repo,
    group: GroupRow,
    domain: DomainInfo | None,
    *,
    exists: Callable[[str], bool],
    memory: MemoryCheck,
) -> Availability:
    """For a synced VM (`domain` None: it is gone). `exists`: does a file exist
    (file_checker, or an ImageTool's exists); `memory`: memory_state.memory_checker."""
    reasons: list[str] = []
    volumes: dict[str, str | None] = {}
    if domain is None:
        reasons.append(f"VM {group.vm_uuid} is no longer defined")
    if (memory_problem := memory(group)) is not None:
        reasons.append(memory_problem)
    in_group: set[str] = set()
    refs = repo.refs_with_snapshots([group.uuid])
    attached = [
        v for ref, _ in refs if (v := repo.volume(ref.volume_uuid)) is not None and v.attached
    ]
    lineages = repo.lineages(attached) if domain is not None else {}
    for ref, snapshot in refs:
        in_group.add(ref.volume_uuid)
        volume = repo.volume(ref.volume_uuid)
        problem = None
        if snapshot.deleted:
            problem = f"snapshot {snapshot.uuid} of volume {ref.volume_name} was deleted"
        elif volume is None or not volume.attached or domain is None:
            problem = f"volume {ref.volume_name} ({ref.volume_uuid}) is no longer attached"
        else:
            problem = _files_problem(repo, ref, snapshot, lineages[volume.uuid], exists)
        volumes[ref.volume_uuid] = problem
        if problem is not None and domain is not None:
            reasons.append(problem)
    if domain is not None:
        snapshottable = {
            p.disk.target for p in classify(domain) if p.device_id is not None and p.eligible
        }
        for volume in repo.volumes_of_vm(group.vm_uuid, attached_only=True):
            if volume.uuid not in in_group and volume.target in snapshottable:
                reasons.append(
                    f"volume {volume.name} ({volume.target}) is attached now but not in the group"
                )
    return Availability(group.uuid, not reasons, "; ".join(reasons) or None, volumes)


def _files_problem(
    repo: Repo,
    ref: RefRow,
    snapshot: SnapshotRow,
    lineage: list[SnapshotRow],
    exists: Callable[[str], bool],
) -> str | None:
    """Why the snapshot's point in time cannot be read back: a file of its recorded
    chain (itself first) missing, or the snapshot itself marked changed. None: it can."""
    by_uuid = {s.uuid: s for s in lineage}
    volume = f"volume {ref.volume_name} ({ref.volume_uuid})"
    current: SnapshotRow | None = snapshot
    seen: set[str] = set()
    while current is not None and current.uuid not in seen:
        seen.add(current.uuid)
        what = "its snapshot" if current is snapshot else "the snapshot below it"
        # Only the ref's own snapshot: a merge writes into a file only after every other
        # child of it was rebased off it, and the child it merges still holds every
        # cluster it copies down, so what reads through that child reads as before.
        if current is snapshot and current.changed:
            return f"{volume}: {what} {current.uuid} changed: {current.changed}"
        if not exists(current.install_path):
            return f"{volume}: file {current.install_path} of {what} {current.uuid} is missing"
        parent = current.parent_uuid
        if parent is None:
            return None
        # A parent outside the lineage is a deleted row whose file may still be there
        # (sync keeps a removed volume's files): its file decides.
        current = by_uuid.get(parent) or repo.snapshot(parent)
        if current is None:
            return f"{volume}: the metadata names a parent snapshot {parent} it does not hold"
    return None
