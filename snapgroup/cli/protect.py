"""snapgroup protect GROUP_UUID / unprotect GROUP_UUID: a protected group is never pruned
by a policy, and a plain delete of it is refused until it is unprotected."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import group_detail, print_json


def register(sub: Any) -> None:
    for name in ("protect", "unprotect"):
        parser = sub.add_parser(name)
        parser.add_argument("uuid", metavar="GROUP_UUID")
        parser.set_defaults(run=run, protected=name == "protect")


def run(args: argparse.Namespace, ctx: Context) -> int:
    group = ctx.engine.protect(args.uuid, protected=args.protected)
    if ctx.as_json:
        print_json({"inventory": group.to_inventory()}, ctx.out)
    else:
        group_detail(group, ctx.out)
    return 0
