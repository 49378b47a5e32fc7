"""Metadata against what libvirt and the files say now, run by `snapgroup sync`
(and, implicitly, at the start of every operation on a VM: ops/syncing.py).
"""

from __future__ import annotations

from snapgroup.ops.context import OpContext
from snapgroup.ops.recovery import recover_pending
from snapgroup.ops.resolve import lookup_or_none, resolve_vm
from snapgroup.ops.syncing import Change, forget_gone, sync_locked
from snapgroup.store.repo import Repo


def sync(ctx: OpContext, vm: str | None = None, *, deep: bool = True) -> list[Change]:
    """Sync one VM (name or UUID, also of an undefined VM) or every VM snapgroup knows.
    `deep` also compares each attached volume's real chain with the metadata."""
    recover_pending(ctx)  # an interrupted operation is finished first, never "synced" over
    if vm is not None:
        vm_uuids = [resolve_vm(ctx, vm)[0]]
    else:
        with ctx.db.transaction() as session:
            repo = Repo(session)
            host = ctx.host  # another host's VMs are its own to sync
            groups = repo.groups(host=host)
            vm_uuids = sorted(repo.vm_uuids(host=host) | {g.vm_uuid for g in groups})
    changes: list[Change] = []
    gone = []
    for vm_uuid in vm_uuids:
        with ctx.locks.vm(vm_uuid, wait=ctx.lock_wait):
            domain = lookup_or_none(ctx, vm_uuid)
            changes += sync_locked(ctx, vm_uuid, domain, deep=deep)
            if domain is None:
                gone.append(vm_uuid)
    # A VM gone with no groups left is forgotten; once a forgotten clone no longer
    # reads the snapshots of the VM it came from, that one may go too: until none does.
    while gone:
        forgotten = []
        for vm_uuid in gone:
            with ctx.locks.vm(vm_uuid, wait=ctx.lock_wait):
                if lookup_or_none(ctx, vm_uuid) is None and (done := forget_gone(ctx, vm_uuid)):
                    changes.append(done)
                    forgotten.append(vm_uuid)
        gone = [u for u in gone if u not in forgotten] if forgotten else []
    return changes
