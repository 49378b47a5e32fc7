"""What a request is refused for at once (400/404/409), before a job is started: a
client learns of a bad request from the request itself, as ZStack's API checks do, and
only the work's own failures reach the job's result."""

from __future__ import annotations

import os

from snapgroup.engine import Engine
from snapgroup.errors import Busy, InvalidArgument, NotFound
from snapgroup.locks import try_vm_lock
from snapgroup.store.repo import Repo
from snapgroup.store.tables import GroupRow


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
    """Busy (409) when another operation holds the VM now and the engine would not wait
    for it. The job may still meet one that starts in between (then it fails, 503)."""
    if engine.lock_wait > 0:
        return  # the job waits its turn
    fd = try_vm_lock(vm_uuid)
    if fd is None:
        raise Busy(f"another snapgroup operation on VM {vm_uuid} is in progress")
    os.close(fd)
