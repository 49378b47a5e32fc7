"""snapgroup mount GROUP|--backup ID --at DIR [--disk vdb] [--fs NAME] MOUNTPOINT;
snapgroup umount MOUNTPOINT."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.files import SOURCE_HELP, add_parser, add_source, source_of
from snapgroup.cli.output import print_json
from snapgroup.domain.errors import InvalidArgument


def register(sub: Any) -> None:
    parser = add_parser(
        sub,
        "mount",
        usage="%(prog)s (GROUP | --backup ID --at DIR) [--disk TARGET] [--fs NAME] MOUNTPOINT",
        description="One filesystem, read-only (FUSE, served by the appliance), until "
        "`snapgroup umount MOUNTPOINT`. " + SOURCE_HELP,
    )
    parser.add_argument("words", nargs="+", metavar="[GROUP] MOUNTPOINT")
    add_source(parser)
    parser.set_defaults(run=run)
    unmount = sub.add_parser("umount")
    unmount.add_argument("mountpoint", metavar="MOUNTPOINT")
    unmount.set_defaults(run=run_umount)


def run(args: argparse.Namespace, ctx: Context) -> int:
    source, rest = source_of(args, list(args.words))
    if len(rest) != 1:
        raise InvalidArgument("name one MOUNTPOINT")
    done = ctx.engine.mount(source, rest[0], disk=args.disk, fs=args.fs)
    if ctx.as_json:
        print_json({"mounted": done.to_dict()}, ctx.out)
        return 0
    ctx.out.write(
        f"{done.filesystem} mounted read-only at {done.mountpoint} "
        f"(snapgroup umount {done.mountpoint})\n"
    )
    return 0


def run_umount(args: argparse.Namespace, ctx: Context) -> int:
    ctx.engine.umount(args.mountpoint)
    if ctx.as_json:
        print_json({"unmounted": args.mountpoint}, ctx.out)
    return 0
