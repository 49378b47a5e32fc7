"""Recovery: finish or roll back the operations a killed process left running. Each use
case registers the recovery of its journal kind here (@recovers); this module imports
none of them (ops/__init__.py imports them all, which fills the registry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from snapgroup.domain.errors import NotFound
from snapgroup.domain.models import DomainInfo, VmState
from snapgroup.ops.context import OpContext
from snapgroup.ops.journal import FAILED, Journal
from snapgroup.store.operations import OperationRepo
from snapgroup.store.tables import OperationRow

# (context, operation uuid, its journaled plan, the VM's domain now)
RecoverFn = Callable[[OpContext, str, dict[str, Any], DomainInfo], None]
_RECOVERERS: dict[str, RecoverFn] = {}
# Kinds whose work is in a backup repository, not on the VM (export, prune, restore): a
# repository outlives the VM, so they are recovered without looking it up; their
# recoveries get a placeholder domain (state OTHER, no disks) and must not read it.
_WITHOUT_VM: set[str] = set()


def recovers(kind: str, *, without_vm: bool = False) -> Callable[[RecoverFn], RecoverFn]:
    """Register the decorated function as the recovery of journal kind `kind`."""

    def register(fn: RecoverFn) -> RecoverFn:
        assert kind not in _RECOVERERS, f"two recoveries for {kind}"
        _RECOVERERS[kind] = fn
        if without_vm:
            _WITHOUT_VM.add(kind)
        return fn

    return register


def recover_pending(ctx: OpContext) -> list[OperationRow]:
    """Finish or roll back every interrupted operation of this host whose VM lock is
    free (a held lock means its process is still at work). Idempotent."""
    with ctx.db.transaction() as session:
        pending = OperationRepo(session).unfinished(host=ctx.journal.host)
    recovered = []
    for row in pending:
        with ctx.locks.try_vm(row.vm_uuid) as free:
            if not free:
                continue
            with ctx.db.transaction() as session:
                fresh = OperationRepo(session).get(row.uuid)
            if fresh is None or fresh.state != "running":
                continue
            recover_one(ctx, fresh)
            with ctx.db.transaction() as session:
                after = OperationRepo(session).get(row.uuid)
            recovered.append(after or fresh)
    return recovered


def recover_one(ctx: OpContext, row: OperationRow) -> None:
    """One interrupted operation (the caller holds its VM's lock)."""
    plan = Journal.plan_of(row)
    if row.kind in _WITHOUT_VM:
        _RECOVERERS[row.kind](ctx, row.uuid, plan, DomainInfo(row.vm_uuid, "", VmState.OTHER, ()))
        return
    try:
        domain = ctx.hv.lookup(row.vm_uuid)
    except NotFound:
        ctx.journal.close(
            row.uuid,
            FAILED,
            detail="recover: the VM no longer exists; its files were left as they are",
        )
        return
    recover = _RECOVERERS.get(row.kind)
    if recover is None:
        ctx.journal.close(row.uuid, FAILED, detail=f"recover: unknown kind {row.kind}")
        return
    recover(ctx, row.uuid, plan, domain)
