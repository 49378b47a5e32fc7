"""`snapgroup hosts`: the hosts of a shared store, their leases and their VMs
(domain/ownership.py)."""

from __future__ import annotations

from snapgroup.domain.ownership import HostView, host_views
from snapgroup.ops.context import OpContext
from snapgroup.store.hosts import HostRepo


def hosts(ctx: OpContext) -> list[HostView]:
    """Every host with a lease or with VMs; this host's lease renewed first."""
    ctx.renew_lease()
    with ctx.db.transaction() as session:
        repo = HostRepo(session)
        leases, vms = repo.leases(), repo.vm_hosts()
    return host_views(leases, vms, ctx.clock())
