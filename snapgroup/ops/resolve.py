"""From what the user typed to a VM's UUID, also for a VM that is no longer defined
(its groups and volumes are still in the metadata)."""

from __future__ import annotations

from snapgroup.domain.errors import InvalidArgument, NotFound
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.validate import looks_like_uuid, parse_uuid
from snapgroup.ops.context import OpContext
from snapgroup.store.repo import Repo


def resolve_vm(ctx: OpContext, vm: str) -> tuple[str, DomainInfo | None]:
    """(VM uuid, its domain or None when it is gone). NotFound when neither libvirt nor
    the metadata knows it."""
    try:
        domain = ctx.hv.lookup(vm)
    except NotFound:
        pass
    else:
        return domain.uuid, domain
    if looks_like_uuid(vm):
        uuid = parse_uuid(vm, "VM")
        with ctx.db.transaction() as session:
            known = bool(Repo(session).volumes_of_vm(uuid) or Repo(session).groups(vm_uuid=uuid))
        if known:
            return uuid, None
        raise NotFound(f"VM {vm} is neither defined in libvirt nor known to snapgroup")
    with ctx.db.transaction() as session:
        uuids = sorted({v.vm_uuid for v in Repo(session).volumes_named(vm)})
    if not uuids:
        raise NotFound(f"no VM named {vm!r} in libvirt or in snapgroup's metadata")
    if len(uuids) > 1:
        raise InvalidArgument(
            f"VM name {vm!r} is gone from libvirt and matches several recorded VMs "
            f"({', '.join(uuids)}): give the UUID"
        )
    return uuids[0], None


def lookup_or_none(ctx: OpContext, vm_uuid: str) -> DomainInfo | None:
    try:
        return ctx.hv.lookup(vm_uuid)
    except NotFound:
        return None
