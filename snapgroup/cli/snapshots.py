"""snapgroup snapshots --vm VM: every volume snapshot of a VM, grouped or not."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table


def register(sub: Any) -> None:
    parser = sub.add_parser("snapshots")
    parser.add_argument("--vm", required=True, help="VM name or UUID (also of an undefined VM)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    views = ctx.engine.list_snapshots(args.vm)
    if ctx.as_json:
        print_json({"inventories": [v.to_inventory() for v in views]}, ctx.out)
        return 0
    rows = [
        (
            v.uuid,
            v.target,
            v.name,
            v.group_uuid,
            v.parent_uuid,
            "yes" if v.latest else "",
            v.install_path,
        )
        for v in views
    ]
    table(rows, ["SNAPSHOT", "DISK", "NAME", "GROUP", "PARENT", "LATEST", "INSTALL PATH"], ctx.out)
    return 0
