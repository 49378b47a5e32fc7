"""snapgroup extract GROUP|--backup ID --at DIR [--disk vdb] [--fs NAME] PATH... --to DIR."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.files import SOURCE_HELP, add_parser, add_source, source_of
from snapgroup.cli.output import print_json, table


def register(sub: Any) -> None:
    parser = add_parser(
        sub,
        "extract",
        usage="%(prog)s (GROUP | --backup ID --at DIR) [--disk TARGET] [--fs NAME] "
        "PATH... --to DIR",
        description="Each PATH (a file, or a directory's whole tree) is copied to "
        "DIR/<its name> with its mtime and mode (no setuid/setgid/sticky bit, no "
        "group/other write, owned by you); nothing existing is overwritten, no link "
        "leads out of DIR. " + SOURCE_HELP,
    )
    parser.add_argument("words", nargs="+", metavar="[GROUP] PATH")
    parser.add_argument("--to", required=True, metavar="DIR", help="an existing directory")
    add_source(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    source, paths = source_of(args, list(args.words))
    done = ctx.engine.extract(source, paths, to=args.to, disk=args.disk, fs=args.fs)
    if ctx.as_json:
        print_json({"extracted": [d.to_dict() for d in done]}, ctx.out)
        return 0
    for item in done:
        for member, why in item.skipped:
            ctx.err.write(f"warning: {item.path}: {member} not extracted: {why}\n")
    rows = [(d.path, d.type, d.files, d.bytes, d.to) for d in done]
    table(rows, ["PATH", "TYPE", "FILES", "BYTES", "TO"], ctx.out)
    return 0
