"""snapgroup check GROUP_UUID...: can each group still be reverted to, and if not why."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table


def register(sub: Any) -> None:
    parser = sub.add_parser("check")
    parser.add_argument("uuids", nargs="+", metavar="GROUP_UUID")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    results = ctx.engine.check(args.uuids)
    if ctx.as_json:
        print_json({"results": [r.to_dict() for r in results]}, ctx.out)
    else:
        rows = [(r.uuid, "yes" if r.available else "no", r.reason) for r in results]
        table(rows, ["GROUP", "AVAILABLE", "REASON"], ctx.out)
    return 0
