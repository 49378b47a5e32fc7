"""snapgroup update GROUP_UUID [--name N] [--description D]."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import group_detail, print_json


def register(sub: Any) -> None:
    parser = sub.add_parser("update")
    parser.add_argument("uuid", metavar="GROUP_UUID")
    parser.add_argument("--name")
    parser.add_argument("--description")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    group = ctx.engine.update(args.uuid, name=args.name, description=args.description)
    if ctx.as_json:
        print_json({"inventory": group.to_inventory()}, ctx.out)
    else:
        group_detail(group, ctx.out)
    return 0
