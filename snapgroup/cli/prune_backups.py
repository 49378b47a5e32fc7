"""snapgroup prune-backups --at DIR --vm VM --keep N."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "prune-backups",
    )
    parser.add_argument("--at", required=True, metavar="DIR", help="the repository")
    parser.add_argument("--vm", required=True, help="the VM (name or UUID)")
    parser.add_argument("--keep", required=True, type=int, metavar="N")
    parser.set_defaults(run=run, paths=("at",))  # the daemon runs it when absolute


def run(args: argparse.Namespace, ctx: Context) -> int:
    report = ctx.engine.prune_backups(at=args.at, vm=args.vm, keep=args.keep)
    if ctx.as_json:
        print_json(report.to_dict(), ctx.out)
        return 0
    ctx.out.write(
        f"pruned {len(report.pruned)} backups of VM {report.vm_uuid}; {len(report.kept)} kept\n"
    )
    for b in report.pruned:
        ctx.out.write(f"  merged {b}\n")
    return 0
