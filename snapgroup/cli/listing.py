"""snapgroup list [--vm VM] [--limit N] [--start N]."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli import group_text
from snapgroup.cli.context import Context
from snapgroup.cli.output import group_summary, print_json
from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.inventory import date_memo
from snapgroup.domain.zquery import Query

# One page by default: a store of 100k groups lists in milliseconds, not in minutes.
DEFAULT_PAGE = 100


def register(sub: Any) -> None:
    parser = sub.add_parser("list")
    parser.add_argument("--vm", help="only this VM's groups (name or UUID)")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_PAGE,
        metavar="N",
        help=f"at most N groups (default {DEFAULT_PAGE}; 0: none, only the note)",
    )
    parser.add_argument("--start", type=int, default=0, metavar="N", help="skip the first N")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.limit < 0 or args.start < 0:
        raise InvalidArgument("--limit and --start must not be negative")
    query = Query(limit=args.limit, start=args.start, reply_with_count=True)
    if args.vm is not None:
        everything = ctx.engine.list_groups(vm=args.vm)  # a VM has few: at most its chains'
        groups, total = everything[args.start : args.start + args.limit], len(everything)
    else:
        page = ctx.engine.query_groups(query)
        groups, total = page.groups, page.total or 0
    if ctx.as_json:
        date = date_memo()
        print_json({"inventories": [g.to_inventory(date) for g in groups]}, ctx.out)
    else:
        group_summary(groups, ctx.out)
    ctx.err.write(group_text.page_note(len(groups), total, args.start))
    return 0
