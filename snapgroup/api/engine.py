"""Engine: snapshot groups of a VM's disks. Its own methods: groups, a VM's volumes and
snapshots, the journal; it inherits those on backups, files and policies (backups.py,
files.py, policies.py). Every method imports its use case (ops/) when first called."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from snapgroup.api.backups import Backups, open_repository, policy_export
from snapgroup.api.files import Files
from snapgroup.api.instant import Instant
from snapgroup.api.policies import Policies
from snapgroup.domain.models import DEFAULT_STOP_TIMEOUT, DeleteMode
from snapgroup.ops.consistency import FREEZE_TIMEOUT_S, Consistency
from snapgroup.ops.context import OpContext, utcnow
from snapgroup.ops.context import new_uuid as random_uuid

if TYPE_CHECKING:
    from snapgroup.domain.inventory import DeleteReport, DeleteResult, Group, VolumeView
    from snapgroup.domain.ownership import HostView
    from snapgroup.domain.zquery import Query
    from snapgroup.ops import queries
    from snapgroup.ops.availability_rules import Availability
    from snapgroup.ops.clone import Clone
    from snapgroup.ops.delete_plan import DeletePlan
    from snapgroup.ops.hosts import Retired
    from snapgroup.ops.journal import Journal
    from snapgroup.ops.queries import GroupPage
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
    from snapgroup.store.repo import Repo
    from snapgroup.store.tables import GroupRow, OperationRow, VolumeRow


class _FromContext:
    """An Engine attribute kept in its OpContext (settable: tests swap a port)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, engine: Engine | None, owner: type) -> object:
        return self if engine is None else getattr(engine.ctx, self.name)

    def __set__(self, engine: Engine, value: object) -> None:
        setattr(engine.ctx, self.name, value)


class Engine(Backups, Files, Instant, Policies):
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
        clock: Clock = utcnow,
        new_uuid: Callable[[], str] = random_uuid,
        lock_wait: float = 0.0,
        freeze_timeout: int = FREEZE_TIMEOUT_S,
        host: str | None = None,
        backup_store: BackupStoreFactory = open_repository,
        guest_files: GuestFiles | None = None,
    ) -> None:
        """`host`: this host's name in a store shared by several (default
        snapgroup.infra.host.local_host()); the engine only operates on VMs it owns.
        `lock_wait`: seconds to wait for another operation on the same VM.
        `guest_files`: the file browser's port (default libguestfs, made when used)."""
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
        self.policy_export = policy_export
        self._guest_files = guest_files

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
        from snapgroup.ops import create

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
        from snapgroup.ops import queries

        return queries.get(self.ctx, group_uuid)

    def query_groups(self, query: Query) -> GroupPage:
        """One page of the groups a ZStack query matches, selected in SQL."""
        from snapgroup.ops import queries

        return queries.query_groups(self.ctx.db, query)

    def list_groups(self, *, vm: str | None = None) -> list[Group]:
        from snapgroup.ops import queries

        return queries.list_groups(self.ctx, vm=vm)

    def update(
        self, group_uuid: str, *, name: str | None = None, description: str | None = None
    ) -> Group:
        from snapgroup.ops import update

        return update.update(self.ctx, group_uuid, name=name, description=description)

    def delete(
        self,
        group_uuid: str,
        *,
        mode: DeleteMode | str = DeleteMode.PERMISSIVE,
        progress: ProgressFn | None = None,
    ) -> DeleteReport:
        from snapgroup.ops import delete

        return delete.delete(self.ctx, group_uuid, mode=mode, progress=progress)

    def delete_plan(
        self, group_uuid: str, *, mode: DeleteMode | str = DeleteMode.PERMISSIVE
    ) -> DeletePlan:
        """`delete --dry-run`: the plan the delete would run, nothing touched."""
        from snapgroup.ops import delete

        return delete.plan(self.ctx, group_uuid, mode=mode)

    def check(self, group_uuids: Sequence[str]) -> list[Availability]:
        from snapgroup.ops import availability

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
        from snapgroup.ops import revert

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
        from snapgroup.ops import clone

        return clone.clone(self.ctx, group_uuid, name=name, start=start)

    def revert_volume(self, snapshot_uuid: str) -> RevertReport:
        """ZStack's RevertVolumeFromSnapshot: the snapshot's volume alone, from its group."""
        from snapgroup.ops import revert

        return revert.revert_volume(self.ctx, snapshot_uuid)

    def ungroup(self, group_uuid: str) -> Group:
        from snapgroup.ops import ungroup

        return ungroup.ungroup(self.ctx, group_uuid)

    def owned_group(self, uuid: str) -> GroupRow:
        return self.ctx.owned_group(uuid)

    def check_owner(
        self, vm_uuid: str, repo: Repo | None = None, *, volumes: Sequence[VolumeRow] = ()
    ) -> None:
        self.ctx.check_owner(vm_uuid, repo, volumes=volumes)

    # A VM's volumes and snapshots
    def volumes(self, vm: str) -> list[VolumeView]:
        from snapgroup.ops import queries

        return queries.volumes(self.ctx, vm)

    def vm_instances(self) -> list[queries.VmInstance]:
        """Every VM libvirt has here, and the recorded ones it no longer has."""
        from snapgroup.ops import queries

        return queries.vm_instances(self.ctx)

    def list_snapshots(self, vm: str) -> list[SnapshotView]:
        from snapgroup.ops import snapshots

        return snapshots.list_snapshots(self.ctx, vm)

    def delete_snapshot(
        self,
        snapshot_uuid: str,
        *,
        mode: DeleteMode | str = DeleteMode.PERMISSIVE,
        progress: ProgressFn | None = None,
    ) -> DeleteResult:
        from snapgroup.ops import delete_snapshot

        return delete_snapshot.delete_snapshot(
            self.ctx, snapshot_uuid, mode=mode, progress=progress
        )

    def group_tree(self, vm: str) -> VmTree:
        from snapgroup.ops import tree

        return tree.group_tree(self.ctx, vm)

    # Metadata against reality, and the journal
    def sync(self, vm: str | None = None, *, deep: bool = True) -> list[Change]:
        from snapgroup.ops import sync

        return sync.sync(self.ctx, vm, deep=deep)

    def verify(self, *, vm: str | None = None, repair: bool = False) -> list[Difference]:
        from snapgroup.ops import verify

        return verify.verify(self.ctx, vm=vm, repair=repair)

    def recover(self) -> list[OperationRow]:
        """Finish or roll back every interrupted operation of this host whose VM lock is
        free (a held lock means its process is still at work). Idempotent. Renews this
        host's lease on the way (every command starts here)."""
        from snapgroup.ops.recovery import recover_pending

        self.ctx.renew_lease()
        return recover_pending(self.ctx)

    def hosts(self) -> list[HostView]:
        """The hosts of the store, their leases and their VMs."""
        from snapgroup.ops import hosts as host_ops

        return host_ops.hosts(self.ctx)

    def retire_host(self, name: str, *, force: bool = False) -> Retired:
        """Host `name`, down for good, retired: the hosts that define its VMs may take
        them over (refused while its lease is live, or while its last report names VMs
        it owns running, unless `force`); the requests queued for it fail."""
        from snapgroup.ops import hosts as host_ops

        return host_ops.retire(self.ctx, name, force=force)

    def heartbeat(self, *, address: str | None = None, serving: bool = True) -> float:
        """This host's lease renewed now (serve's heartbeat), `address` recorded (not
        `serving`: erased, the server stops). The lease's length in seconds."""
        return self.ctx.renew_lease(address=address, force=True, serving=serving)

    def vm_busy(self, vm_uuid: str) -> bool:
        """Whether an operation holds the VM now (its lock: on PostgreSQL, any host's)."""
        with self.ctx.locks.try_vm(vm_uuid) as free:
            return not free

    def operations(self, *, limit: int = 100) -> list[OperationRow]:
        from snapgroup.ops import queries

        return queries.operations(self.ctx, limit=limit)
