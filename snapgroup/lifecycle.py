"""Recovery of the operations of a group's later life (revert, clone, deleting one
snapshot): Engine._recover_one hands their journal rows here (and imports this module
only then, since these modules import the engine)."""

from __future__ import annotations

from typing import Any

from snapgroup.domain.models import DomainInfo
from snapgroup.engine import Engine
from snapgroup.ops.clone import recover_clone
from snapgroup.ops.delete_snapshot import recover_delete_snapshot
from snapgroup.ops.journal import FAILED
from snapgroup.ops.revert import recover_revert


def recover_lifecycle(
    engine: Engine, kind: str, op: str, plan: dict[str, Any], domain: DomainInfo
) -> None:
    if kind == "revert":
        recover_revert(engine, op, plan, domain)
    elif kind == "delete-snapshot":
        recover_delete_snapshot(engine, op, plan, domain)
    elif kind == "clone":
        recover_clone(engine, op, plan, domain)
    else:
        engine.journal.close(op, FAILED, detail=f"recover: unknown kind {kind}")
