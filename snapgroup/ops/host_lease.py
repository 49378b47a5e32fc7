"""This host's lease in the registry (store/hosts.py, domain/ownership.py): renewed
while the host operates (at most every third of a lease) and by `serve`'s heartbeat,
each time with its report: which VMs run here now. Another host takes a
VM over only on that evidence: the owner's lease expired, or it reports the VM not
running. The times are each host's clock: keep the hosts' clocks in step (NTP)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from snapgroup.domain.errors import (
    HypervisorError,
    HypervisorUnavailable,
    InvalidArgument,
    NotFound,
)
from snapgroup.domain.ownership import DEFAULT_LEASE_SECONDS, HostLease
from snapgroup.ports import Hypervisor
from snapgroup.store.db import Database
from snapgroup.store.hosts import HostRepo

LEASE_ENV = "SNAPGROUP_LEASE_SECONDS"


def lease_seconds() -> float:
    """SNAPGROUP_LEASE_SECONDS (tests and labs shorten it), else 60."""
    value = os.environ.get(LEASE_ENV)
    if not value:
        return DEFAULT_LEASE_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 86400:
        raise InvalidArgument(f"{LEASE_ENV}={value!r}: seconds, more than 0, under a day")
    return seconds


def running_here(hv: Hypervisor) -> set[str] | None:
    """The VMs running (or paused) in this host's libvirt; None when libvirt does not
    answer (the report then says nothing: no host takes a VM over on it)."""
    running = set()
    try:
        listed = hv.list_vms()
        for vm_uuid, _name in listed:
            try:
                if hv.lookup(vm_uuid).state.is_live:
                    running.add(vm_uuid)
            except NotFound:
                continue  # undefined since it was listed
    except (HypervisorUnavailable, HypervisorError):
        return None
    return running


def renew(
    hv: Hypervisor,
    db: Database,
    host: str,
    now: datetime,
    *,
    address: str | None = None,
    keep_address: bool = True,
    if_older_than: float | None = None,
) -> HostLease | None:
    """Renew `host`'s lease with a fresh report. `if_older_than` (seconds): only when
    its last renewal is older than that (by this process or any other of the host).
    The lease as written, or None when it was fresh enough."""
    with db.transaction() as session:
        current = HostRepo(session).lease(host)
        if (
            if_older_than is not None
            and current is not None
            and current.heartbeat + timedelta(seconds=if_older_than) > now
            and current.live(now)
        ):
            return None
    running = running_here(hv)
    expires = now + timedelta(seconds=lease_seconds())
    with db.transaction() as session:
        repo = HostRepo(session)
        repo.renew(
            host,
            now=now,
            expires=expires,
            running=running,
            address=address,
            keep_address=keep_address,
        )
        return repo.lease(host)
