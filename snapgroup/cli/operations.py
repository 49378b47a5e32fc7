"""snapgroup operations: the operation journal, newest first."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table
from snapgroup.cli.recover import operation_dict


def register(sub: Any) -> None:
    parser = sub.add_parser("operations")
    parser.add_argument("--limit", type=int, default=50)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    ops = ctx.engine.operations(limit=args.limit)
    if ctx.as_json:
        print_json({"inventories": [operation_dict(op) for op in ops]}, ctx.out)
        return 0
    rows = [
        (
            op.uuid,
            op.kind,
            op.vm_uuid,
            op.group_uuid,
            op.state,
            op.step,
            op.started.strftime("%Y-%m-%d %H:%M:%S"),
        )
        for op in ops
    ]
    table(rows, ["OPERATION", "KIND", "VM", "GROUP", "STATE", "STEP", "STARTED (UTC)"], ctx.out)
    return 0
