"""`snapgroup hosts`: the hosts of a shared store, their leases and their VMs
(domain/ownership.py); `--retire HOST`: a host down for good, whose VMs the hosts that
define them may take over whatever its last report said."""

from __future__ import annotations

from dataclasses import dataclass

from snapgroup.domain.errors import OperationError
from snapgroup.domain.ownership import HostView, host_views, retire_refusal
from snapgroup.ops.context import OpContext
from snapgroup.store.hosts import HostRepo
from snapgroup.store.queue import RequestQueue

FAILED_JOB_STATUS = 503  # a failed REST job's poll answer (rest/status.py FAILED_JOB)


def hosts(ctx: OpContext) -> list[HostView]:
    """Every host with a lease, with VMs or with requests queued for it; this host's
    lease renewed first."""
    ctx.renew_lease()
    with ctx.db.transaction() as session:
        repo = HostRepo(session)
        leases, vms = repo.leases(), repo.vm_hosts()
    return host_views(leases, vms, ctx.clock(), RequestQueue(ctx.db).waiting())


@dataclass(frozen=True)
class Retired:
    host: str
    vms: tuple[str, ...]  # the VMs it owns: the hosts that define them may take them over
    failed_jobs: tuple[str, ...]  # the REST requests queued for it, failed


def retire(ctx: OpContext, name: str, *, force: bool = False) -> Retired:
    """Host `name` retired (its lease expired; its last report names none of its VMs
    running, unless `force`): journaled; the requests queued for it fail."""
    ctx.renew_lease()
    now = ctx.clock()
    with ctx.db.transaction() as session:
        repo = HostRepo(session)
        lease, owned = repo.lease(name), repo.vm_hosts().get(name, set())
        refusal = retire_refusal(lease, name=name, here=ctx.host, owned=owned, now=now, force=force)
        if refusal is not None:
            raise refusal
        detail = f"host {name} retired by host {ctx.host}" + (" (--force)" if force else "")
        repo.retire(name, by=ctx.host, now=now, vms=owned, new_uuid=ctx.new_uuid, detail=detail)
    error = OperationError(f"host {name} was retired before it ran this queued request")
    failed = RequestQueue(ctx.db).fail(
        now=now, status=FAILED_JOB_STATUS, document={"error": error.to_dict()}, host=name
    )
    return Retired(name, tuple(sorted(owned)), tuple(failed))
