"""Which snapshot files other chains read: a clone's disks sit on the snapshots of the VM
it was cloned from, and every file below such a snapshot is in the clone's chain too.
Those snapshots are pinned: a merge would rewrite or remove a file the clone reads."""

from __future__ import annotations

from snapgroup.store.repo import Repo


def pinned_snapshots(repo: Repo) -> dict[str, str]:
    """snapshot uuid -> why it must not be merged away."""
    pinned: dict[str, str] = {}
    for snapshot_uuid, volume in repo.foreign_dependents():
        why = f"read by VM {volume.vm_name}'s disk {volume.target} (volume {volume.uuid})"
        current: str | None = snapshot_uuid
        while current is not None and current not in pinned:
            row = repo.snapshot(current)
            if row is None:
                break
            pinned[current] = why
            current = row.parent_uuid
    return pinned
