"""Engine's methods on a backup repository, a directory (ops/export.py, ops/restore.py,
ops/prune_backups.py), and a snapshot policy's export."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snapgroup.domain.backup_manifest import BackupManifest, DamagedBackup
    from snapgroup.domain.retention import AutoGroup, VmRef
    from snapgroup.ops.backing_up import ExportResult, VerifyReport
    from snapgroup.ops.context import OpContext
    from snapgroup.ops.prune_backups import PruneReport
    from snapgroup.ops.restore import Restored
    from snapgroup.ports import BackupStore, ProgressFn
    from snapgroup.store.policy_repo import PolicyRecord


def open_repository(root: str) -> BackupStore:
    """The engine's default BackupStoreFactory: a directory as adapters/backup_repo.py
    reads and writes it (loaded with the first backup command)."""
    from snapgroup.adapters.backup_repo import BackupRepo

    return BackupRepo(root)


def policy_export(ctx: OpContext, vm: VmRef, group: AutoGroup, record: PolicyRecord) -> None:
    """A snapshot policy's export (autosnap_port.ExportFn): the group just taken to the
    policy's repository, then that VM's backups there pruned to export_keep (if set)."""
    if not record.export_to:
        return
    from snapgroup.ops import export, prune_backups

    export.export(ctx, group.uuid, to=record.export_to, compress=record.export_compress)
    if record.export_keep:
        prune_backups.prune_backups(ctx, at=record.export_to, vm=vm.uuid, keep=record.export_keep)


class Backups:
    """Backups: export, list, verify, restore, prune."""

    ctx: OpContext

    def export(
        self,
        group_uuid: str,
        *,
        to: str,
        full: bool = False,
        compress: bool = False,
        progress: ProgressFn | None = None,
    ) -> ExportResult:
        from snapgroup.ops import export

        return export.export(
            self.ctx, group_uuid, to=to, full=full, compress=compress, progress=progress
        )

    def backups(self, *, at: str, vm: str | None = None) -> list[BackupManifest]:
        return self.scan_backups(at=at, vm=vm)[0]

    def scan_backups(
        self, *, at: str, vm: str | None = None
    ) -> tuple[list[BackupManifest], list[DamagedBackup]]:
        """backups(), and the backups not listed: their manifest unreadable or gone."""
        from snapgroup.ops import export

        return export.scan_backups(self.ctx, at=at, vm=vm)

    def verify_backup(self, *, at: str, backup_id: str | None = None) -> VerifyReport:
        from snapgroup.ops import export

        return export.verify_backup(self.ctx, at=at, backup_id=backup_id)

    def restore(
        self,
        backup_id: str,
        *,
        source: str,
        as_vm: str | None = None,
        to_dir: str | None = None,
        disk_dir: str | None = None,
        keep_chain: bool = False,
        start: bool = False,
        progress: ProgressFn | None = None,
    ) -> Restored:
        from snapgroup.ops import restore

        return restore.restore(
            self.ctx,
            backup_id,
            source=source,
            as_vm=as_vm,
            to_dir=to_dir,
            disk_dir=disk_dir,
            keep_chain=keep_chain,
            start=start,
            progress=progress,
        )

    def prune_backups(self, *, at: str, vm: str, keep: int) -> PruneReport:
        from snapgroup.ops import prune_backups

        return prune_backups.prune_backups(self.ctx, at=at, vm=vm, keep=keep)
