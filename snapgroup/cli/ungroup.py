"""snapgroup ungroup GROUP_UUID: drop the group, keep its volume snapshots."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import group_detail, print_json


def register(sub: Any) -> None:
    parser = sub.add_parser("ungroup")
    parser.add_argument("uuid", metavar="GROUP_UUID")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    group = ctx.engine.ungroup(args.uuid)
    if ctx.as_json:
        print_json({"inventory": group.to_inventory()}, ctx.out)
    else:
        ctx.out.write(f"ungrouped {group.uuid}; its snapshots are kept:\n")
        group_detail(group, ctx.out)
    return 0
