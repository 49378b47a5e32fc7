"""What every use case shares: the ports, the journal, the store, host ownership,
discovery and the group queries."""

from __future__ import annotations

import json
import uuid as uuidlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from snapgroup.consistency import (
    FREEZE_TIMEOUT_S,
)
from snapgroup.discovery import Discovered, register_volumes
from snapgroup.errors import (
    InvalidArgument,
    NotFound,
    OperationError,
    SnapgroupError,
)
from snapgroup.host import local_host
from snapgroup.inventory import Group, GroupRef
from snapgroup.journal import Journal
from snapgroup.models import DomainInfo
from snapgroup.ports import Hypervisor, ImageTool
from snapgroup.store.db import Database
from snapgroup.store.repo import Repo
from snapgroup.validate import parse_uuid


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_uuid() -> str:
    return uuidlib.uuid4().hex


class EngineCore:
    def __init__(
        self,
        *,
        hypervisor: Hypervisor,
        images: ImageTool,
        db: Database,
        clock: Callable[[], datetime] = _utcnow,
        new_uuid: Callable[[], str] = _new_uuid,
        lock_wait: float = 0.0,
        freeze_timeout: int = FREEZE_TIMEOUT_S,
        host: str | None = None,
    ) -> None:
        """`host`: this host's name in a store shared by several (default
        snapgroup.host.local_host()); the engine only operates on VMs it owns."""
        self.hv = hypervisor
        self.images = images
        self.db = db
        self.clock = clock
        self.new_uuid = new_uuid
        self.lock_wait = lock_wait  # seconds to wait for another operation on the same VM
        self.freeze_timeout = freeze_timeout  # seconds per guest-agent request
        self.host = host or local_host()
        self.journal = Journal(db, clock, new_uuid, host=self.host)

    def check_owner(self, vm_uuid: str, repo: Repo | None = None) -> None:
        """OperationError unless this host owns the VM's files (or no host is recorded):
        in a store shared by several hosts, each operates on its own VMs only."""
        if repo is None:
            with self.db.transaction() as session:
                self.check_owner(vm_uuid, Repo(session))
            return
        others = repo.vm_hosts(vm_uuid) - {self.host}
        if others:
            raise OperationError(
                f"VM {vm_uuid} belongs to host {', '.join(sorted(others))}, not to this "
                f"host ({self.host}): a host only operates on its own VMs"
            )

    def _discover(self, domain: DomainInfo) -> Discovered:
        with self.db.transaction() as session:
            return register_volumes(
                Repo(session), domain, now=self.clock(), new_uuid=self.new_uuid, host=self.host
            )

    def _domain_of(self, *, vm: str | None, root_volume_uuid: str | None) -> DomainInfo:
        if (vm is None) == (root_volume_uuid is None):
            raise InvalidArgument("give exactly one of a VM (name or UUID) or a root volume UUID")
        if vm is not None:
            return self.hv.lookup(vm)
        volume_uuid = parse_uuid(root_volume_uuid or "", "rootVolumeUuid")
        with self.db.transaction() as session:
            volume = Repo(session).volume(volume_uuid)
        if volume is None:
            raise NotFound(f"volume {volume_uuid} is not known (run `snapgroup volumes` first)")
        if volume.volume_type != "Root":
            raise InvalidArgument(
                f"volume {volume_uuid} is a {volume.volume_type} volume, not Root"
            )
        self.check_owner(volume.vm_uuid)
        return self.hv.lookup(volume.vm_uuid)

    def get(self, group_uuid: str) -> Group:
        uuid = parse_uuid(group_uuid, "group uuid")
        with self.db.transaction() as session:
            groups = load_groups(Repo(session), [uuid])
        if not groups:
            raise NotFound(f"snapshot group {uuid} not found")
        return groups[0]

    def list_groups(self, *, vm: str | None = None) -> list[Group]:
        vm_uuid = self.hv.lookup(vm).uuid if vm is not None else None
        with self.db.transaction() as session:
            repo = Repo(session)
            rows = repo.groups(vm_uuid=vm_uuid)
            return load_groups(repo, [r.uuid for r in rows])

    def _sync(self, vm_uuid: str, domain: DomainInfo | None) -> None:
        """Record what changed behind our back first (detached or removed volumes, a VM
        that is gone): snapgroup.sync. The caller holds the VM's lock."""
        from snapgroup.engine import Engine  # both import this module
        from snapgroup.sync import sync_locked

        assert isinstance(self, Engine)  # the only concrete use case class
        sync_locked(self, vm_uuid, domain)

    def _remove_files(self, paths: Sequence[str]) -> None:
        for path in paths:
            try:
                self.images.remove(path)
            except SnapgroupError:
                continue  # best effort on the error path; the original error matters more


def load_groups(repo: Repo, uuids: Sequence[str]) -> list[Group]:
    found = repo.groups_by_uuid(uuids)  # one query, not one per group
    rows = {u: found.get(u) for u in uuids}
    refs: dict[str, list[GroupRef]] = {u: [] for u in uuids}
    for r in repo.ref_views(list(uuids)):  # plain rows: no ORM object per ref
        refs[r.group_uuid].append(
            GroupRef(
                volume_snapshot_uuid=r.volume_snapshot_uuid,
                group_uuid=r.group_uuid,
                device_id=r.device_id,
                snapshot_deleted=r.snapshot_deleted,
                volume_uuid=r.volume_uuid,
                volume_name=r.volume_name,
                volume_type=r.volume_type,
                install_path=r.install_path,
                snapshot_name=r.snapshot_name,
                volume_last_attach_date=r.volume_last_attach_date,
                create_date=r.create_date,
                last_op_date=max(r.last_op_date, r.snapshot_last_op_date),
            )
        )
    return [
        Group(
            uuid=row.uuid,
            name=row.name,
            description=row.description,
            vm_uuid=row.vm_uuid,
            create_date=row.create_date,
            last_op_date=row.last_op_date,
            refs=tuple(refs[u]),
            consistency_type=row.consistency_type,
            frozen_filesystems=tuple(json.loads(row.frozen_filesystems or "[]")),
            freeze_millis=row.freeze_millis,
            consistency_note=row.consistency_note,
        )
        for u, row in rows.items()
        if row is not None
    ]
