"""snapgroup list [--vm VM]."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import group_summary, print_json


def register(sub: Any) -> None:
    parser = sub.add_parser("list", help="list snapshot groups")
    parser.add_argument("--vm", help="only this VM's groups (name or UUID)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    groups = ctx.engine.list_groups(vm=args.vm)
    if ctx.as_json:
        print_json({"inventories": [g.to_inventory() for g in groups]}, ctx.out)
    else:
        group_summary(groups, ctx.out)
    return 0
