"""A VM's backups as chains (pure): which backups a bad file breaks, which backup the next
increment builds on. Each disk of a backup reads through its chain, oldest (full) first
(backup_manifest.DiskBackup.chain)."""

from __future__ import annotations

from collections.abc import Iterable

from snapgroup.domain.backup_manifest import BackupManifest


def reads_through(m: BackupManifest, backup_ids: set[str]) -> bool:
    """Whether any disk of `m` reads through (or is) one of `backup_ids`."""
    return any(backup_ids.intersection(d.chain) for d in m.disks)


def broken_backups(
    manifests: Iterable[BackupManifest], bad: Iterable[tuple[str, str]]
) -> dict[str, set[tuple[str, str]]]:
    """Which backups a bad file breaks: `bad` holds (backup id, volume uuid) pairs whose
    file is missing or damaged; each backup whose disk reads through one of them (its own
    file or any in its chain) maps to the bad pairs it depends on."""
    bad_set = set(bad)
    broken: dict[str, set[tuple[str, str]]] = {}
    for m in manifests:
        for d in m.disks:
            hits = {(b, d.volume_uuid) for b in d.chain if (b, d.volume_uuid) in bad_set}
            if hits:
                broken.setdefault(m.backup_id, set()).update(hits)
    return broken


def newest_base(
    manifests: Iterable[BackupManifest], ancestors: Iterable[str]
) -> BackupManifest | None:
    """The base of an incremental export: the newest backup (by export time) whose group
    is one of `ancestors` (the group uuids on the path from the exported group to its
    tree's root, the group itself excluded). None: export full."""
    wanted = set(ancestors)
    candidates = [m for m in manifests if m.group_uuid in wanted]
    if not candidates:
        return None
    return max(candidates, key=lambda m: (m.created, m.backup_id))
