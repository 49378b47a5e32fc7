"""What every use case receives: the ports, the store, the journal, the clock, this
host's name, the VM locks and the lock wait; and the ownership checks they all make."""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from snapgroup.domain.errors import NotFound, SnapgroupError
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.ownership import Decision, OwnedElsewhere, Verdict
from snapgroup.infra.host import local_host
from snapgroup.infra.locks import FileLocks
from snapgroup.ops import host_lease
from snapgroup.ops.consistency import FREEZE_TIMEOUT_S
from snapgroup.ops.host_lease import lease_seconds
from snapgroup.ops.journal import Journal
from snapgroup.ops.ownership import domain_here, owner_decision, take_over
from snapgroup.ports import BackupStoreFactory, Clock, Hypervisor, ImageTool, VmLocks
from snapgroup.store.db import Database
from snapgroup.store.locks import AdvisoryLocks
from snapgroup.store.repo import Repo
from snapgroup.store.tables import GroupRow, VolumeRow

SETTLE_POLL_SECONDS = 1.0  # how often --wait looks again at a VM running on two hosts


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
    _lease_renewed: datetime | None = field(default=None, init=False, repr=False)

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
        self,
        vm_uuid: str,
        repo: Repo | None = None,
        *,
        volumes: Sequence[VolumeRow] = (),
        domain: DomainInfo | None = None,
        looked_up: bool = False,
    ) -> None:
        """Returns when this host owns the VM, or has just taken it over from a host
        that no longer runs it (ops/ownership.py, domain/ownership.py); else
        OperationError, which says whose it is and why. `repo`: the caller's
        transaction, which holds the VM's lock (a take-over is done in it); without
        one, a take-over takes the lock. `volumes`: the VM's, when the caller has
        just read them all; `domain` with `looked_up`: the VM in this host's libvirt."""
        if repo is None:
            self.renew_lease()
            # A VM running on two hosts may be migrating: --wait waits for it to settle.
            deadline = time.monotonic() + self.lock_wait
            while True:
                with self.db.transaction() as session:
                    decision = self._owner(Repo(session), vm_uuid, (), domain, looked_up)
                if not decision.settling or time.monotonic() >= deadline:
                    break
                time.sleep(SETTLE_POLL_SECONDS)
                looked_up = False  # where it runs now
            if decision.verdict is not Verdict.TAKE_OVER:
                self._refuse(decision)
                return
            with self.locks.vm(vm_uuid, wait=self.lock_wait), self.db.transaction() as session:
                self.check_owner(vm_uuid, Repo(session), domain=domain, looked_up=looked_up)
            return
        decision = self._owner(repo, vm_uuid, volumes, domain, looked_up)
        self._refuse(decision)
        if decision.verdict is Verdict.TAKE_OVER:
            if not looked_up:
                domain = domain_here(self.hv, vm_uuid)
            take_over(
                repo,
                decision,
                vm_uuid=vm_uuid,
                host=self.host,
                now=self.clock(),
                new_uuid=self.new_uuid,
                running_here=domain is not None and domain.state.is_live,
            )

    def _owner(
        self,
        repo: Repo,
        vm_uuid: str,
        volumes: Sequence[VolumeRow],
        domain: DomainInfo | None,
        looked_up: bool,
    ) -> Decision:
        return owner_decision(
            self.hv,
            repo,
            vm_uuid=vm_uuid,
            host=self.host,
            now=self.clock(),
            volumes=volumes,
            domain=domain,
            looked_up=looked_up,
        )

    @staticmethod
    def _refuse(decision: Decision) -> None:
        if decision.verdict is Verdict.REFUSE:
            raise OwnedElsewhere(
                decision.reason,
                owner=decision.owner,
                address=decision.address,
                queue_for=decision.queue_for,
            )

    def renew_lease(
        self, *, address: str | None = None, force: bool = False, serving: bool = True
    ) -> float:
        """This host's lease in the registry, renewed with its report when a third of
        it has passed (`force`: now; `address`: its `serve`, recorded; not `serving`:
        its address erased). The lease's length in seconds."""
        seconds, now = lease_seconds(), self.clock()
        last = self._lease_renewed
        if not force and last is not None and now < last + timedelta(seconds=seconds / 3):
            return seconds  # renewed by this process lately: not even a read
        host_lease.renew(
            self.hv,
            self.db,
            self.host,
            now,
            address=address,
            keep_address=serving,
            if_older_than=None if force else seconds / 3,
        )
        self._lease_renewed = now
        return seconds

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
