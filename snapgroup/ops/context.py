"""What every use case receives: the ports, the store, the journal, the clock, this
host's name, the VM locks and the lock wait; and the ownership checks they all make."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from snapgroup.domain.errors import NotFound, OperationError, SnapgroupError
from snapgroup.infra.host import local_host
from snapgroup.infra.locks import FileLocks
from snapgroup.ops.consistency import FREEZE_TIMEOUT_S
from snapgroup.ops.journal import Journal
from snapgroup.ports import BackupStoreFactory, Clock, Hypervisor, ImageTool, VmLocks
from snapgroup.store.db import Database
from snapgroup.store.locks import AdvisoryLocks
from snapgroup.store.repo import Repo
from snapgroup.store.tables import GroupRow, VolumeRow


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return uuidlib.uuid4().hex


@dataclass
class OpContext:
    hv: Hypervisor
    images: ImageTool
    db: Database
    journal: Journal
    clock: Clock
    new_uuid: Callable[[], str]
    host: str  # this host's name in a store shared by several: it owns only its VMs
    lock_wait: float = 0.0  # seconds to wait for another operation on the same VM
    freeze_timeout: int = FREEZE_TIMEOUT_S  # seconds per guest-agent request
    # Opens a backup repository (a directory) as the BackupStore port; None: no backups.
    backup_store: BackupStoreFactory | None = None
    # One operation on a VM at a time: in the database when every host shares it.
    locks: VmLocks = field(default_factory=FileLocks)

    @classmethod
    def make(
        cls,
        *,
        hypervisor: Hypervisor,
        images: ImageTool,
        db: Database,
        clock: Clock = utcnow,
        new_uuid: Callable[[], str] = new_uuid,
        lock_wait: float = 0.0,
        freeze_timeout: int = FREEZE_TIMEOUT_S,
        host: str | None = None,
        backup_store: BackupStoreFactory | None = None,
        locks: VmLocks | None = None,
    ) -> OpContext:
        """`host`: default snapgroup.infra.host.local_host(). `locks`: default the
        database's advisory locks on PostgreSQL (they span hosts), else flock(2)."""
        host = host or local_host()
        if locks is None:
            locks = AdvisoryLocks(db) if db.is_postgresql else FileLocks()
        return cls(
            hv=hypervisor,
            images=images,
            db=db,
            journal=Journal(db, clock, new_uuid, host=host),
            clock=clock,
            new_uuid=new_uuid,
            host=host,
            lock_wait=lock_wait,
            freeze_timeout=freeze_timeout,
            backup_store=backup_store,
            locks=locks,
        )

    def check_owner(
        self, vm_uuid: str, repo: Repo | None = None, *, volumes: Sequence[VolumeRow] = ()
    ) -> None:
        """OperationError unless this host owns the VM's files (or no host is recorded):
        in a store shared by several hosts, each operates on its own VMs only.
        `volumes`: the VM's volumes, when the caller has just read them all."""
        if repo is None:
            with self.db.transaction() as session:
                self.check_owner(vm_uuid, Repo(session))
            return
        if volumes:
            hosts = {v.host for v in volumes if v.host is not None} | repo.group_hosts(vm_uuid)
        else:
            hosts = repo.vm_hosts(vm_uuid)
        others = hosts - {self.host}
        if others:
            raise OperationError(
                f"VM {vm_uuid} belongs to host {', '.join(sorted(others))}, not to this "
                f"host ({self.host}): a host only operates on its own VMs"
            )

    def owned_group(self, uuid: str) -> GroupRow:
        """The group's row (NotFound when there is none), once this host is known to own
        its VM: where an operation on one group starts."""
        with self.db.transaction() as session:
            row = Repo(session).group(uuid)
        if row is None:
            raise NotFound(f"snapshot group {uuid} not found")
        self.check_owner(row.vm_uuid)
        return row

    def remove_files(self, paths: Sequence[str]) -> None:
        for path in paths:
            try:
                self.images.remove(path)
            except SnapgroupError:
                continue  # best effort on the error path; the original error matters more
