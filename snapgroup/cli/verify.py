"""snapgroup verify [--vm VM] [--repair]: metadata against the domain, chains and files."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table


def register(sub: Any) -> None:
    parser = sub.add_parser("verify")
    parser.add_argument("--vm", help="only this VM (name or UUID)")
    parser.add_argument("--repair", action="store_true", help="fix what is safe to fix")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    diffs = ctx.engine.verify(vm=args.vm, repair=args.repair)
    if ctx.as_json:
        print_json({"differences": [d.to_dict() for d in diffs]}, ctx.out)
    elif diffs:
        rows = [
            (
                d.vm_uuid,
                d.volume_uuid,
                d.kind if d.severity == "error" else f"{d.kind} ({d.severity})",
                "yes" if d.repaired else "no",
                ",".join(d.groups) or "-",
                d.detail,
            )
            for d in diffs
        ]
        table(rows, ["VM", "VOLUME", "DIFFERENCE", "REPAIRED", "GROUPS", "DETAIL"], ctx.out)
    else:
        ctx.out.write("metadata matches reality\n")
    # Warnings (leaked clusters: space, never data) leave the status 0.
    return 1 if any(not d.repaired and d.severity != "warning" for d in diffs) else 0
