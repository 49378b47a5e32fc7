"""snapgroup tree --vm VM: the VM's restore points as a tree."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json


def register(sub: Any) -> None:
    parser = sub.add_parser("tree")
    parser.add_argument("--vm", required=True, help="VM name or UUID (also of an undefined VM)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    tree = ctx.engine.group_tree(args.vm)
    if ctx.as_json:
        print_json(tree.to_dict(), ctx.out)
    else:
        ctx.out.write(tree.render())
    return 0
