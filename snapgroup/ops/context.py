"""What every use case shares: the ports, the journal, the store, host ownership,
discovery and the group queries."""

from __future__ import annotations

import json
import uuid as uuidlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from snapgroup.domain.errors import (
    InvalidArgument,
    NotFound,
    OperationError,
    SnapgroupError,
)
from snapgroup.domain.inventory import Group, GroupRef
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.validate import parse_uuid
from snapgroup.infra.host import local_host
from snapgroup.ops.consistency import (
    FREEZE_TIMEOUT_S,
)
from snapgroup.ops.discovery import Discovered, register_volumes
from snapgroup.ops.journal import Journal
from snapgroup.ports import Hypervisor, ImageTool
from snapgroup.store.db import Database
from snapgroup.store.repo import DateParser, Repo
from snapgroup.store.tables import GroupRow, VolumeRow


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
        snapgroup.infra.host.local_host()); the engine only operates on VMs it owns."""
        self.hv = hypervisor
        self.images = images
        self.db = db
        self.clock = clock
        self.new_uuid = new_uuid
        self.lock_wait = lock_wait  # seconds to wait for another operation on the same VM
        self.freeze_timeout = freeze_timeout  # seconds per guest-agent request
        self.host = host or local_host()
        self.journal = Journal(db, clock, new_uuid, host=self.host)

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

    def owned_group(self, uuid: str) -> GroupRow:
        """The group's row (NotFound when there is none), once this host is known to own
        its VM: where an operation on one group starts."""
        with self.db.transaction() as session:
            row = Repo(session).group(uuid)
        if row is None:
            raise NotFound(f"snapshot group {uuid} not found")
        self.check_owner(row.vm_uuid)
        return row

    def list_groups(self, *, vm: str | None = None) -> list[Group]:
        vm_uuid = self.hv.lookup(vm).uuid if vm is not None else None
        with self.db.transaction() as session:
            return load_vm_groups(Repo(session), vm_uuid)

    def _sync(self, vm_uuid: str, domain: DomainInfo | None) -> None:
        """Record what changed behind our back first (detached or removed volumes, a VM
        that is gone): snapgroup.ops.syncing. The caller holds the VM's lock."""
        from snapgroup.engine import Engine  # both import this module
        from snapgroup.ops.syncing import sync_locked

        assert isinstance(self, Engine)  # the only concrete use case class
        sync_locked(self, vm_uuid, domain)

    def _synced(self, domain: DomainInfo) -> AbstractContextManager[tuple[Repo, Discovered]]:
        """_sync then _discover, with one read of the VM's volumes, leaving a session
        open to read on in: snapgroup.ops.syncing.synced."""
        from snapgroup.engine import Engine  # both import this module
        from snapgroup.ops.syncing import synced

        assert isinstance(self, Engine)
        return synced(self, domain)

    def _remove_files(self, paths: Sequence[str]) -> None:
        for path in paths:
            try:
                self.images.remove(path)
            except SnapgroupError:
                continue  # best effort on the error path; the original error matters more


def load_groups(repo: Repo, uuids: Sequence[str]) -> list[Group]:
    """The groups of those UUIDs that exist, in that order: two queries for any number."""
    wanted = list(dict.fromkeys(uuids))
    if not wanted:
        return []
    found = {g.uuid: g for g in _groups(repo, uuids=wanted)}
    return [found[u] for u in wanted if u in found]


def load_vm_groups(repo: Repo, vm_uuid: str | None) -> list[Group]:
    """Every group of the VM (of every VM: None), oldest first: two queries."""
    return _groups(repo, vm_uuid=vm_uuid)


def _groups(
    repo: Repo, *, uuids: Sequence[str] | None = None, vm_uuid: str | None = None
) -> list[Group]:
    date = repo.date_parser()  # each distinct date converted once
    refs: dict[str, list[GroupRef]] = {}
    for r in repo.ref_views(uuids=uuids, vm_uuid=vm_uuid):
        refs.setdefault(r[1], []).append(_ref(r, date))
    return [
        _group(g, refs.get(g[0], ()), date) for g in repo.group_views(uuids=uuids, vm_uuid=vm_uuid)
    ]


def _ref(row: Sequence[Any], date: DateParser) -> GroupRef:
    (
        snapshot,
        group,
        device_id,
        volume,
        volume_name,
        volume_type,
        attached,
        created,
        changed,
        deleted,
        path,
        snapshot_name,
        snapshot_changed,
        changed_reason,
    ) = row  # Repo.ref_views
    # Positional, in GroupRef's field order: keywords cost ~2 us more per ref (1,600).
    return GroupRef(
        snapshot,
        group,
        device_id,
        deleted,
        volume,
        volume_name,
        volume_type,
        path,
        snapshot_name,
        date(attached),
        date(created),
        max(date(changed), date(snapshot_changed)),
        changed_reason,
    )


def _group(row: Sequence[Any], refs: Sequence[GroupRef], date: DateParser) -> Group:
    (uuid, name, description, vm_uuid, created, changed, consistency, frozen, millis, note) = (
        row  # Repo.group_views
    )
    return Group(
        uuid=uuid,
        name=name,
        description=description,
        vm_uuid=vm_uuid,
        create_date=date(created),
        last_op_date=date(changed),
        refs=tuple(refs),
        consistency_type=consistency,
        frozen_filesystems=tuple(json.loads(frozen or "[]")),
        freeze_millis=millis,
        consistency_note=note,
    )
