"""What a request is refused for at once (400/404/409), before a job is started: a
client learns of a bad request from the request itself, as ZStack's API checks do, and
only the work's own failures reach the job's result."""

from __future__ import annotations

import threading

from snapgroup.api import Engine
from snapgroup.domain.errors import InvalidArgument, NotFound
from snapgroup.store.repo import Repo
from snapgroup.store.tables import GroupRow

_named = threading.local()  # the VM a precheck named, read by Services.start_job


def root_volume_vm(engine: Engine, volume_uuid: str) -> str:
    """The VM of a root volume this host owns."""
    with engine.db.transaction() as session:
        volume = Repo(session).volume(volume_uuid)
    if volume is None:
        raise NotFound(
            f"volume {volume_uuid} is not known (`snapgroup volumes --vm VM` records a VM's)"
        )
    if volume.volume_type != "Root":
        raise InvalidArgument(f"volume {volume_uuid} is a {volume.volume_type} volume, not Root")
    engine.check_owner(volume.vm_uuid)
    return volume.vm_uuid


def group_row(engine: Engine, group_uuid: str) -> GroupRow | None:
    with engine.db.transaction() as session:
        return Repo(session).group(group_uuid)


def own_group(engine: Engine, group_uuid: str) -> GroupRow:
    """The group, which must exist and be of a VM this host owns."""
    row = group_row(engine, group_uuid)
    if row is None:
        raise NotFound(f"snapshot group {group_uuid} not found")
    engine.check_owner(row.vm_uuid)
    return row


def vm_idle(engine: Engine, vm_uuid: str) -> None:
    """Names the VM the job works on: the job waits for it to be idle (its turn, as in
    ZStack's queue; snapgroup.rest.jobs) instead of the request being refused. The
    callers have checked that this host owns it."""
    del engine  # the signature of every precheck
    _named.vm = vm_uuid


def take_named_vm() -> str | None:
    """The VM the last precheck on this thread named (vm_idle), and forget it."""
    vm: str | None = getattr(_named, "vm", None)
    _named.vm = None
    return vm
