"""snapgroup sync [--vm VM]: record what changed behind snapgroup's back."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "sync",
    )
    parser.add_argument("--vm", help="only this VM (name or UUID, also of an undefined VM)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    changes = ctx.engine.sync(args.vm)
    if ctx.as_json:
        print_json({"changes": [c.to_dict() for c in changes]}, ctx.out)
    elif changes:
        rows = [(c.vm_uuid, c.volume_uuid, c.kind, c.detail) for c in changes]
        table(rows, ["VM", "VOLUME", "CHANGE", "DETAIL"], ctx.out)
    else:
        ctx.out.write("nothing changed\n")
    return 0
