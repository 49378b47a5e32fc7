"""snapgroup clone GROUP_UUID --name NEW_VM [--start [--instant [--follow]]]."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import ProgressPrinter, print_json, table
from snapgroup.cli.restore import add_instant_options, background, say_copying
from snapgroup.domain.errors import InvalidArgument


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "clone",
        description="Define a new libvirt VM (new UUID, new MAC addresses, its own "
        "overlays on the group's snapshots) that boots from the group's point in time. "
        "While the clone exists, the snapshots it reads cannot be deleted.",
    )
    parser.add_argument("uuid", metavar="GROUP_UUID")
    parser.add_argument("--name", required=True, help="the new VM's name")
    parser.add_argument(
        "--start",
        action="store_true",
        help="start the clone once defined (a memory group's clone resumes from its saved "
        "state: running on from the group's moment, not booted)",
    )
    add_instant_options(parser, "the group's snapshots")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    copying = None
    if args.instant:
        if not args.start:
            raise InvalidArgument("--instant needs --start")
        made, copying = ctx.engine.instant_clone(
            args.uuid,
            name=args.name,
            bandwidth=args.bandwidth,
            follow=args.follow,
            progress=ProgressPrinter("copying", ctx.err) if args.follow else None,
        )
    else:
        made = ctx.engine.clone(args.uuid, name=args.name, start=args.start)
    instant = background(args, copying) if copying is not None else None
    if ctx.as_json:
        doc = {"inventory": made.to_inventory()}
        if instant is not None:
            doc["instant"] = instant
        print_json(doc, ctx.out)
        return 0
    ctx.out.write(f"VM {made.name} ({made.uuid}) is {made.state}\n")
    if made.resumed:
        ctx.out.write("resumed from the group's memory state, at the group's moment\n")
        if made.note:
            ctx.out.write(f"note: {made.note}\n")
    if instant is not None:
        say_copying(instant, ctx)
    rows = [(d.target, d.volume_uuid, d.snapshot_uuid, d.install_path) for d in made.disks]
    table(rows, ["DISK", "VOLUME", "ON SNAPSHOT", "INSTALL PATH"], ctx.out)
    return 0
