"""Recovery: finish or roll back the operations a killed process left running. Each use
case registers the recovery of its journal kind here (@recovers); this module imports
none of them: the module HOMES names for a kind is loaded by name when an unfinished
operation of that kind is found, so a command whose journal is empty loads none."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from snapgroup.domain.errors import NotFound
from snapgroup.domain.models import DomainInfo, VmState
from snapgroup.infra import mounts
from snapgroup.ops import leaks
from snapgroup.ops.context import OpContext
from snapgroup.ops.journal import FAILED, Journal, written_files
from snapgroup.store.operations import OperationRepo
from snapgroup.store.tables import OperationRow

# (context, operation uuid, its journaled plan, the VM's domain now)
RecoverFn = Callable[[OpContext, str, dict[str, Any], DomainInfo], None]
_RECOVERERS: dict[str, RecoverFn] = {}
# Kinds whose work is in a backup repository, not on the VM (export, prune, restore): a
# repository outlives the VM, so they are recovered without looking it up; their
# recoveries get a placeholder domain (state OTHER, no disks) and must not read it.
_WITHOUT_VM: set[str] = set()
# Journal kind -> the module whose @recovers registers its recovery
# (tests/unit/test_recovery_registry.py checks that each does).
HOMES = {
    "clone": "snapgroup.ops.clone",
    "create": "snapgroup.ops.creating",
    "delete": "snapgroup.ops.delete",
    "delete-snapshot": "snapgroup.ops.delete_snapshot",
    "export": "snapgroup.ops.export",
    "instant": "snapgroup.ops.instant",
    "prune-backups": "snapgroup.ops.prune_backups",
    "restore": "snapgroup.ops.restore",
    "resume-state": "snapgroup.ops.memory_copies",
    "revert": "snapgroup.ops.reverting",
}


def recovers(kind: str, *, without_vm: bool = False) -> Callable[[RecoverFn], RecoverFn]:
    """Register the decorated function as the recovery of journal kind `kind`."""

    def register(fn: RecoverFn) -> RecoverFn:
        assert kind not in _RECOVERERS, f"two recoveries for {kind}"
        _RECOVERERS[kind] = fn
        if without_vm:
            _WITHOUT_VM.add(kind)
        return fn

    return register


def recovery_of(kind: str) -> RecoverFn | None:
    """The recovery registered for `kind` (its HOMES module loaded first), or None."""
    if kind not in _RECOVERERS and kind in HOMES:
        importlib.import_module(HOMES[kind])
    return _RECOVERERS.get(kind)


def recover_pending(ctx: OpContext) -> list[OperationRow]:
    """Finish or roll back every interrupted operation of this host whose VM lock is
    free (a held lock means its process is still at work), and release the holds of
    `snapgroup mount`s whose process died (ops/mount_holds.py). Idempotent."""
    if any(not m.alive for m in mounts.records()):
        from snapgroup.ops import mount_holds  # only then: most commands find none

        mount_holds.sweep(ctx)
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
    recover = recovery_of(row.kind)
    if recover is not None and row.kind in _WITHOUT_VM:
        recover(ctx, row.uuid, plan, DomainInfo(row.vm_uuid, "", VmState.OTHER, ()))
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
    if recover is None:
        ctx.journal.close(row.uuid, FAILED, detail=f"recover: unknown kind {row.kind}")
        return
    # A writer killed mid-write leaves leaked clusters in its file: freed before the
    # work is redone (the redo may need that space) and after (a redo cut short by an
    # error leaves its own; a running VM's files are checked only then). What became
    # of each file's (the later pass's word) is noted on the operation.
    written = written_files(plan)
    found = {leak.path: leak for leak in leaks.free_written(ctx, written, settled=False)}
    recover(ctx, row.uuid, plan, domain)
    found.update((leak.path, leak) for leak in leaks.free_written(ctx, written, settled=True))
    if found:
        described = "; ".join(leak.describe() for leak in found.values())
        ctx.journal.note(row.uuid, f"recover: {described}")
