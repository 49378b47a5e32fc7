"""snapgroup recover: finish or roll back interrupted operations (idempotent)."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table


def register(sub: Any) -> None:
    parser = sub.add_parser("recover")
    parser.set_defaults(run=run, skip_auto_recover=True)


def run(args: argparse.Namespace, ctx: Context) -> int:
    done = ctx.engine.recover()
    if ctx.as_json:
        print_json({"inventories": [operation_dict(op) for op in done]}, ctx.out)
    elif done:
        rows = [(op.uuid, op.kind, op.vm_uuid, op.step, op.state, op.detail) for op in done]
        table(rows, ["OPERATION", "KIND", "VM", "STOPPED AT", "NOW", "DETAIL"], ctx.out)
    else:
        ctx.out.write("nothing to recover\n")
    return 0


def operation_dict(op: Any) -> dict[str, Any]:
    return {
        "uuid": op.uuid,
        "kind": op.kind,
        "vmInstanceUuid": op.vm_uuid,
        "groupUuid": op.group_uuid,
        "state": op.state,
        "step": op.step,
        "detail": op.detail,
        "host": op.host,
        "pid": op.pid,
        "started": op.started.isoformat(),
        "updated": op.updated.isoformat(),
    }
