"""A repository's backups as `snapgroup backups` prints them, with the engine's command
line (backups.py) or without it (quick_backups.py): one printer, so that the two cannot
differ. Standard library only."""

from __future__ import annotations

from snapgroup.cli.group_text import table

TYPE_CHECKING = False  # not typing's: importing typing costs ~3 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, TextIO

    from snapgroup.domain.backup_manifest import BackupManifest, DamagedBackup

HEADERS = ("BACKUP", "CREATED", "VM", "GROUP", "KIND", "BYTES")


def document(found: Sequence[BackupManifest], damaged: Sequence[DamagedBackup]) -> dict[str, Any]:
    """The --json document."""
    return {"backups": [m.summary() for m in found], "damaged": [d.to_dict() for d in damaged]}


def write(
    found: Sequence[BackupManifest],
    damaged: Sequence[DamagedBackup],
    *,
    tree: bool,
    out: TextIO,
    err: TextIO,
) -> None:
    """A warning on err for each backup not listed, then the table (or the tree) on out."""
    for d in damaged:  # not listed, never silently: `verify-backup` names what it breaks
        err.write(f"warning: backup {d.backup_id} of VM {d.vm_uuid} is not listed: {d.problem}\n")
    if tree:
        _tree(found, out)
        return
    rows = [
        (
            m.backup_id,
            m.created,
            m.vm_name or m.vm_uuid,
            m.group_name,
            "full" if m.full else "incremental",
            sum(d.bytes_written for d in m.disks),
        )
        for m in found
    ]
    table(rows, HEADERS, out)


def _tree(found: Sequence[BackupManifest], out: TextIO) -> None:
    """Each backup under its base (its first disk's); a base not listed: a root."""
    ids = {m.backup_id for m in found}
    kids: dict[str | None, list[BackupManifest]] = {}
    for m in found:
        base = m.disks[0].base_backup_id if m.disks else None
        kids.setdefault(base if base in ids else None, []).append(m)

    def show(m: BackupManifest, depth: int) -> None:
        kind = "full" if m.full else "incr"
        out.write(
            f"{'    ' * depth}{m.backup_id}  {m.created}  {m.vm_name}  {m.group_name}  {kind}\n"
        )
        for child in kids.get(m.backup_id, []):
            show(child, depth + 1)

    for root in kids.get(None, []):
        show(root, 0)
