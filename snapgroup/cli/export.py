"""snapgroup export GROUP_UUID --to DIR [--full] [--compress]."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import ProgressPrinter, print_json, table


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "export",
        description="Export the group's disks to the repository in DIR: only the clusters "
        "changed since the newest export of an ancestor group still in the repository, "
        "else the whole disks (the output says why). Works on running VMs.",
    )
    parser.add_argument("uuid", metavar="GROUP_UUID")
    parser.add_argument("--to", required=True, metavar="DIR", help="the repository")
    parser.add_argument("--full", action="store_true", help="export every disk whole")
    parser.add_argument(
        "--compress",
        action="store_true",
        help="compress the files' clusters (zstd): fewer bytes, more CPU",
    )
    parser.set_defaults(run=run, paths=("to",))  # the daemon runs it when absolute


def run(args: argparse.Namespace, ctx: Context) -> int:
    result = ctx.engine.export(
        args.uuid,
        to=args.to,
        full=args.full,
        compress=args.compress,
        progress=ProgressPrinter("exporting", ctx.err),
    )
    m = result.manifest
    if ctx.as_json:
        print_json({"backup": m.summary()}, ctx.out)
        return 0
    kind = "full" if m.full else "incremental"
    ctx.out.write(f"backup {m.backup_id} of group {m.group_uuid} ({kind})\n")
    if m.full_reason:
        ctx.out.write(f"full because: {m.full_reason}\n")
    rows = [(d.target, d.volume_uuid, d.base_backup_id or "-", d.bytes_written) for d in m.disks]
    table(rows, ["DISK", "VOLUME", "BASE", "BYTES"], ctx.out)
    return 0
