"""What a `snapgroup mount` holds while it lives (ops/file_mounts.py makes and ends
mounts): the delete of the group it reads and the prune of any backup it reads are
refused (SYS.1006, naming the mountpoint), as a disk restored with --keep-chain holds
its backup. A mount is recorded on this host (infra/mounts.py: the record is locked by
the process serving the mount, so it is known gone however that process ended); a
backup's mount also holds each backup its chain reads, in the repository (a hold beside
the manifest, naming the mount and this host), where any host's prune sees it.

`snapgroup umount` releases a mount's holds; a mount whose process died is released by
`recover` (sweep), or by the next delete or prune of this host that finds it.
"""

from __future__ import annotations

import logging

from snapgroup.domain.backup_manifest import BackupManifest
from snapgroup.domain.errors import OperationError, SnapgroupError
from snapgroup.infra import mounts
from snapgroup.infra.mounts import MountRecord
from snapgroup.ops.backing_up import open_store
from snapgroup.ops.context import OpContext
from snapgroup.ports import BackupStore

log = logging.getLogger(__name__)


def group_doc(group_uuid: str, mountpoint: str) -> dict[str, object]:
    return {"mountpoint": mountpoint, "group": group_uuid}


def backup_doc(
    repo: str, vm_uuid: str, backup_ids: list[str], mountpoint: str
) -> dict[str, object]:
    return {"mountpoint": mountpoint, "repo": repo, "vm": vm_uuid, "backups": backup_ids}


def group_mounts(ctx: OpContext, group_uuid: str) -> list[str]:
    """The mountpoints where the group is mounted now (dead mounts released first)."""
    sweep(ctx)
    return sorted(
        r.mountpoint for r in mounts.records() if r.alive and r.doc.get("group") == group_uuid
    )


def mounted_error(what: str, points: list[str]) -> OperationError:
    where = ", ".join(points)
    first = points[0]
    return OperationError(
        f"{what} is mounted at {where}; nothing was changed: `snapgroup umount {first}` first"
    )


def check_backup(ctx: OpContext, store: BackupStore, manifest: BackupManifest) -> None:
    """Refuse (SYS.1006) while a mount reads the backup; a hold of this host's whose
    mount is gone is dropped. Another host's is kept: only that host can tell."""
    live = {r.holder for r in mounts.records() if r.alive}
    points = []
    for holder, mount in store.mounts(manifest).items():
        if mount.get("host") == ctx.host and holder not in live:
            store.release(manifest, holder)
            continue
        here = "" if mount.get("host") == ctx.host else f" (on host {mount.get('host')})"
        points.append(f"{mount.get('mountpoint')}{here}")
    if points:
        raise mounted_error(f"backup {manifest.backup_id}", sorted(points))


def release(ctx: OpContext, record: MountRecord) -> None:
    """Drop what the mount held: its backups' holds, then its record."""
    repo, vm = record.doc.get("repo"), record.doc.get("vm")
    if isinstance(repo, str) and isinstance(vm, str):
        store = open_store(ctx, repo, existing=False)
        for backup_id in record.doc.get("backups") or ():
            try:
                store.release(store.get(str(backup_id), vm_uuid=vm), record.holder)
            except SnapgroupError as exc:  # pruned or gone since: nothing held there
                log.info("mount %s: backup %s: %s", record.holder, backup_id, exc.details)
    mounts.forget(record.holder)


def sweep(ctx: OpContext) -> list[str]:
    """Release every mount of this host whose serving process is gone; their
    mountpoints."""
    gone = [r for r in mounts.records() if not r.alive]
    for record in gone:
        release(ctx, record)
    return [r.mountpoint for r in gone]
