"""The public Python API: `open_engine` (the real adapters: libvirt, qemu-img, the
SQLModel store) and `Engine`, whose methods hand each call to its use case in ops/.
Only the entry points (cli/, rest/) and callers outside the package import this."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from snapgroup.adapters.backup_repo import BackupRepo
from snapgroup.adapters.guest_files import LibguestfsFiles
from snapgroup.adapters.libvirt_hv import LibvirtHypervisor
from snapgroup.adapters.qemu_img import QemuImg
from snapgroup.domain.backup_manifest import BackupManifest, DamagedBackup
from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.inventory import DeleteReport, DeleteResult, Group, VolumeView
from snapgroup.domain.models import DEFAULT_STOP_TIMEOUT, DeleteMode
from snapgroup.domain.retention import AutoGroup, Policy, VmRef
from snapgroup.domain.zquery import Query
from snapgroup.ops import autosnap as autosnap_ops
from snapgroup.ops import (
    availability,
    clone,
    create,
    delete,
    delete_snapshot,
    export,
    file_mounts,
    prune_backups,
    queries,
    restore,
    revert,
    snapshots,
    sync,
    tree,
    ungroup,
    update,
    verify,
)
from snapgroup.ops import files as file_ops
from snapgroup.ops import policies as policy_ops
from snapgroup.ops import protect as protect_ops
from snapgroup.ops.autosnap_port import EnginePort, ExportFn
from snapgroup.ops.availability_rules import Availability
from snapgroup.ops.backing_up import ExportResult, VerifyReport
from snapgroup.ops.clone import Clone
from snapgroup.ops.consistency import FREEZE_TIMEOUT_S, Consistency
from snapgroup.ops.context import OpContext
from snapgroup.ops.context import new_uuid as random_uuid
from snapgroup.ops.context import utcnow as now_utc
from snapgroup.ops.creating import MAX_CHAIN_DEPTH
from snapgroup.ops.delete_plan import DeletePlan
from snapgroup.ops.guest_sources import FilesSource
from snapgroup.ops.journal import Journal
from snapgroup.ops.prune_backups import PruneReport
from snapgroup.ops.queries import GroupPage
from snapgroup.ops.recovery import recover_pending
from snapgroup.ops.restore import Restored
from snapgroup.ops.revert import RevertReport
from snapgroup.ops.snapshots import SnapshotView
from snapgroup.ops.syncing import Change
from snapgroup.ops.tree import VmTree
from snapgroup.ops.verify import Difference
from snapgroup.ports import (
    BackupStoreFactory,
    Clock,
    GuestFiles,
    Hypervisor,
    ImageTool,
    ProgressFn,
)
from snapgroup.store.db import Database
from snapgroup.store.policy_repo import PolicyRecord
from snapgroup.store.repo import Repo
from snapgroup.store.tables import GroupRow, OperationRow, VolumeRow

__all__ = ["MAX_CHAIN_DEPTH", "DeleteMode", "Engine", "open_engine"]

DEFAULT_URI = "qemu:///system"
# For tests only: a fixed "now" (ISO 8601) for the engine's clock and the policy pass,
# read here and nowhere else. Never set it on a real host: groups would all carry it.
TEST_NOW_ENV = "SNAPGROUP_TEST_NOW"


def test_clock() -> Clock | None:
    """The fixed clock SNAPGROUP_TEST_NOW asks for (a naive time is UTC), else None."""
    value = os.environ.get(TEST_NOW_ENV)
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{TEST_NOW_ENV}={value!r}: not an ISO 8601 time") from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return lambda: moment


def default_uri() -> str:
    return os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def open_engine(
    *, connect: str | None = None, db: str | None = None, lock_wait: float = 0.0
) -> Engine:
    """`connect`: a libvirt URI (default LIBVIRT_DEFAULT_URI or qemu:///system);
    `db`: any SQLAlchemy URL (default SNAPGROUP_DB or /var/lib/snapgroup/snapgroup.db)."""
    return Engine(
        hypervisor=LibvirtHypervisor(connect or default_uri()),
        images=QemuImg(),
        db=Database(db),
        lock_wait=lock_wait,
        clock=test_clock() or now_utc,
    )


def _policy_export(ctx: OpContext, vm: VmRef, group: AutoGroup, record: PolicyRecord) -> None:
    """A snapshot policy's export (autosnap_port.ExportFn): the group just taken to the
    policy's repository, then that VM's backups there pruned to export_keep (if set)."""
    if not record.export_to:
        return
    export.export(ctx, group.uuid, to=record.export_to, compress=record.export_compress)
    if record.export_keep:
        prune_backups.prune_backups(ctx, at=record.export_to, vm=vm.uuid, keep=record.export_keep)


class _FromContext:
    """An Engine attribute kept in its OpContext (settable: tests swap a port)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, engine: Engine | None, owner: type) -> object:
        return self if engine is None else getattr(engine.ctx, self.name)

    def __set__(self, engine: Engine, value: object) -> None:
        setattr(engine.ctx, self.name, value)


class Engine:
    """Snapshot groups of a VM's disks: every method is one use case (ops/)."""

    if TYPE_CHECKING:  # the attributes below, typed as the context holds them
        hv: Hypervisor
        images: ImageTool
        db: Database
        journal: Journal
        clock: Clock
        new_uuid: Callable[[], str]
        host: str
        lock_wait: float
        freeze_timeout: int
    else:
        hv = _FromContext()
        images = _FromContext()
        db = _FromContext()
        journal = _FromContext()
        clock = _FromContext()
        new_uuid = _FromContext()
        host = _FromContext()
        lock_wait = _FromContext()
        freeze_timeout = _FromContext()

    def __init__(
        self,
        *,
        hypervisor: Hypervisor,
        images: ImageTool,
        db: Database,
        clock: Clock = now_utc,
        new_uuid: Callable[[], str] = random_uuid,
        lock_wait: float = 0.0,
        freeze_timeout: int = FREEZE_TIMEOUT_S,
        host: str | None = None,
        backup_store: BackupStoreFactory = BackupRepo,
        guest_files: GuestFiles | None = None,
    ) -> None:
        """`host`: this host's name in a store shared by several (default
        snapgroup.infra.host.local_host()); the engine only operates on VMs it owns.
        `lock_wait`: seconds to wait for another operation on the same VM."""
        self.ctx = OpContext.make(
            hypervisor=hypervisor,
            images=images,
            db=db,
            clock=clock,
            new_uuid=new_uuid,
            lock_wait=lock_wait,
            freeze_timeout=freeze_timeout,
            host=host,
            backup_store=backup_store,
        )
        # A policy with export_to exports each group it takes (then prunes to export_keep).
        self.policy_export = _policy_export
        # The file browser's appliance (libguestfs): reads guests' filesystems.
        self.guest_files: GuestFiles = guest_files or LibguestfsFiles()

    # Groups
    def create(
        self,
        *,
        name: str,
        vm: str | None = None,
        root_volume_uuid: str | None = None,
        description: str | None = None,
        resource_uuid: str | None = None,
        skip_unsupported: bool = False,
        consistency: Consistency | str = Consistency.AUTO,
        with_memory: bool = False,
        live: bool = False,
    ) -> Group:
        return create.create(
            self.ctx,
            name=name,
            vm=vm,
            root_volume_uuid=root_volume_uuid,
            description=description,
            resource_uuid=resource_uuid,
            skip_unsupported=skip_unsupported,
            consistency=consistency,
            with_memory=with_memory,
            live=live,
        )

    def get(self, group_uuid: str) -> Group:
        return queries.get(self.ctx, group_uuid)

    def query_groups(self, query: Query) -> GroupPage:
        """One page of the groups a ZStack query matches, selected in SQL."""
        return queries.query_groups(self.ctx.db, query)

    def list_groups(self, *, vm: str | None = None) -> list[Group]:
        return queries.list_groups(self.ctx, vm=vm)

    def update(
        self, group_uuid: str, *, name: str | None = None, description: str | None = None
    ) -> Group:
        return update.update(self.ctx, group_uuid, name=name, description=description)

    def delete(
        self,
        group_uuid: str,
        *,
        mode: DeleteMode | str = DeleteMode.PERMISSIVE,
        progress: ProgressFn | None = None,
    ) -> DeleteReport:
        return delete.delete(self.ctx, group_uuid, mode=mode, progress=progress)

    def check(self, group_uuids: Sequence[str]) -> list[Availability]:
        return availability.check(self.ctx, group_uuids)

    def revert(
        self,
        group_uuid: str,
        *,
        volumes: Sequence[str] | None = None,
        safety_group: bool = True,
        stop: bool = False,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        paused: bool = False,
    ) -> RevertReport:
        """A memory group's VM runs again from its saved state (`paused`: paused)."""
        return revert.revert(
            self.ctx,
            group_uuid,
            volumes=volumes,
            safety_group=safety_group,
            stop=stop,
            stop_timeout=stop_timeout,
            paused=paused,
        )

    def clone(self, group_uuid: str, *, name: str, start: bool = False) -> Clone:
        return clone.clone(self.ctx, group_uuid, name=name, start=start)

    def revert_volume(self, snapshot_uuid: str) -> RevertReport:
        """ZStack's RevertVolumeFromSnapshot: the snapshot's volume alone, from its group."""
        return revert.revert_volume(self.ctx, snapshot_uuid)

    def ungroup(self, group_uuid: str) -> Group:
        return ungroup.ungroup(self.ctx, group_uuid)

    def owned_group(self, uuid: str) -> GroupRow:
        return self.ctx.owned_group(uuid)

    def check_owner(
        self, vm_uuid: str, repo: Repo | None = None, *, volumes: Sequence[VolumeRow] = ()
    ) -> None:
        self.ctx.check_owner(vm_uuid, repo, volumes=volumes)

    # A VM's volumes and snapshots
    def volumes(self, vm: str) -> list[VolumeView]:
        return queries.volumes(self.ctx, vm)

    def vm_instances(self) -> list[queries.VmInstance]:
        """Every VM libvirt has here, and the recorded ones it no longer has."""
        return queries.vm_instances(self.ctx)

    def list_snapshots(self, vm: str) -> list[SnapshotView]:
        return snapshots.list_snapshots(self.ctx, vm)

    def delete_snapshot(
        self,
        snapshot_uuid: str,
        *,
        mode: DeleteMode | str = DeleteMode.PERMISSIVE,
        progress: ProgressFn | None = None,
    ) -> DeleteResult:
        return delete_snapshot.delete_snapshot(
            self.ctx, snapshot_uuid, mode=mode, progress=progress
        )

    def group_tree(self, vm: str) -> VmTree:
        return tree.group_tree(self.ctx, vm)

    # Backups: a repository in a directory (ops/export.py, ops/restore.py)
    def export(
        self,
        group_uuid: str,
        *,
        to: str,
        full: bool = False,
        compress: bool = False,
        progress: ProgressFn | None = None,
    ) -> ExportResult:
        return export.export(
            self.ctx, group_uuid, to=to, full=full, compress=compress, progress=progress
        )

    def backups(self, *, at: str, vm: str | None = None) -> list[BackupManifest]:
        return export.scan_backups(self.ctx, at=at, vm=vm)[0]

    def scan_backups(
        self, *, at: str, vm: str | None = None
    ) -> tuple[list[BackupManifest], list[DamagedBackup]]:
        """backups(), and the backups not listed: their manifest unreadable or gone."""
        return export.scan_backups(self.ctx, at=at, vm=vm)

    def verify_backup(self, *, at: str, backup_id: str | None = None) -> VerifyReport:
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

    # Files of any group or backup (ops/files.py, ops/file_mounts.py)
    def files(
        self,
        source: FilesSource,
        *,
        disk: str | None = None,
        fs: str | None = None,
        path: str | None = None,
    ) -> file_ops.Listing:
        return file_ops.browse(self.ctx, self.guest_files, source, disk=disk, fs=fs, path=path)

    def extract(
        self,
        source: FilesSource,
        paths: Sequence[str],
        *,
        to: str,
        disk: str | None = None,
        fs: str | None = None,
    ) -> list[file_ops.Extracted]:
        return file_ops.extract(
            self.ctx, self.guest_files, source, paths=paths, to=to, disk=disk, fs=fs
        )

    def download(
        self, source: FilesSource, path: str, *, disk: str | None = None, fs: str | None = None
    ) -> file_ops.Download:
        return file_ops.download(self.ctx, self.guest_files, source, path=path, disk=disk, fs=fs)

    def mount(
        self,
        source: FilesSource,
        mountpoint: str,
        *,
        disk: str | None = None,
        fs: str | None = None,
    ) -> file_mounts.Mounted:
        return file_mounts.mount(
            self.ctx, self.guest_files, source, mountpoint=mountpoint, disk=disk, fs=fs
        )

    def umount(self, mountpoint: str) -> None:
        file_mounts.umount(self.guest_files, mountpoint)

    def prune_backups(self, *, at: str, vm: str, keep: int) -> PruneReport:
        return prune_backups.prune_backups(self.ctx, at=at, vm=vm, keep=keep)

    # Metadata against reality, and the journal
    def sync(self, vm: str | None = None, *, deep: bool = True) -> list[Change]:
        return sync.sync(self.ctx, vm, deep=deep)

    def verify(self, *, vm: str | None = None, repair: bool = False) -> list[Difference]:
        return verify.verify(self.ctx, vm=vm, repair=repair)

    def recover(self) -> list[OperationRow]:
        """Finish or roll back every interrupted operation of this host whose VM lock is
        free (a held lock means its process is still at work). Idempotent."""
        return recover_pending(self.ctx)

    def operations(self, *, limit: int = 100) -> list[OperationRow]:
        return queries.operations(self.ctx, limit=limit)

    # Protection and snapshot policies
    def protect(self, group_uuid: str, *, protected: bool = True) -> Group:
        """A protected group is never pruned; a plain delete of it is refused."""
        return protect_ops.protect(self.ctx, group_uuid, protected=protected)

    def delete_plan(
        self, group_uuid: str, *, mode: DeleteMode | str = DeleteMode.PERMISSIVE
    ) -> DeletePlan:
        """`delete --dry-run`: the plan the delete would run, nothing touched."""
        return delete.plan(self.ctx, group_uuid, mode=mode)

    def set_policy(
        self,
        policy: Policy,
        *,
        export_to: str | None = None,
        export_keep: int | None = None,
        export_compress: bool = False,
    ) -> tuple[PolicyRecord, bool]:
        return policy_ops.set_policy(
            self.ctx,
            policy,
            export_to=export_to,
            export_keep=export_keep,
            export_compress=export_compress,
        )

    def policies(self) -> list[PolicyRecord]:
        return policy_ops.list_policies(self.ctx)

    def policy(self, name: str) -> PolicyRecord:
        return policy_ops.get_policy(self.ctx, name)

    def remove_policy(self, name: str) -> None:
        policy_ops.remove_policy(self.ctx, name)

    def policy_status(self, *, now: datetime | None = None) -> policy_ops.PolicyStatus:
        return policy_ops.policy_status(self.ctx, now=now)

    # Issue 15 sets this: the export of a group a policy just took (EnginePort.export).
    policy_export: ExportFn | None = None

    def autosnap(
        self,
        *,
        dry_run: bool = False,
        parallel: int = autosnap_ops.DEFAULT_PARALLEL,
        wait: float | None = None,
        now: datetime | None = None,
    ) -> autosnap_ops.PassReport:
        """One policy pass. `wait`: seconds a busy VM is waited for, per operation
        (default the engine's lock wait, else autosnap_ops.DEFAULT_WAIT)."""
        records = policy_ops.list_policies(self.ctx)
        port = EnginePort(
            self.ctx,
            [r.policy for r in records],
            records=records,
            delete=self._delete_or_raise,
            plan_delete=lambda ctx, uuid: delete.plan(ctx, uuid).to_json(),
            export=self.policy_export,
        )
        return autosnap_ops.autosnap(
            port,
            [r.policy for r in records],
            now=now or self.ctx.clock(),
            dry_run=dry_run,
            parallel=parallel,
            wait=(self.ctx.lock_wait or autosnap_ops.DEFAULT_WAIT) if wait is None else wait,
        )

    @staticmethod
    def _delete_or_raise(ctx: OpContext, group_uuid: str) -> None:
        report = delete.delete(ctx, group_uuid)
        if report.error is not None:
            raise report.error
