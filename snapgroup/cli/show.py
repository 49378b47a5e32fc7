"""snapgroup show GROUP_UUID."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import group_detail, print_json


def register(sub: Any) -> None:
    parser = sub.add_parser("show")
    parser.add_argument("uuid", metavar="GROUP_UUID")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    group = ctx.engine.get(args.uuid)
    if ctx.as_json:
        print_json({"inventory": group.to_inventory()}, ctx.out)
    else:
        group_detail(group, ctx.out)
    return 0
