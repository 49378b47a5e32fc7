"""snapgroup volumes --vm VM: what a group would cover, and what is skipped and why."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table


def register(sub: Any) -> None:
    parser = sub.add_parser("volumes")
    parser.add_argument("--vm", required=True, help="VM name or UUID")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    views = ctx.engine.volumes(args.vm)
    if ctx.as_json:
        print_json({"inventories": [v.to_dict() for v in views]}, ctx.out)
        return 0
    rows = [
        (
            v.device_id,
            v.target,
            v.volume_type,
            v.format,
            v.volume_uuid,
            v.install_path,
            v.skipped_reason or "snapshotted",
        )
        for v in views
    ]
    table(rows, ["DEV", "TARGET", "TYPE", "FORMAT", "VOLUME UUID", "PATH", "GROUP"], ctx.out)
    return 0
