"""`snapgroup` command line: global options, one module per command, one abort path."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from snapgroup.cli import (
    account,
    check,
    clone,
    create,
    daemon,
    delete,
    delete_snapshot,
    listing,
    operations,
    recover,
    revert,
    serve,
    show,
    snapshots,
    sync,
    tree,
    ungroup,
    update,
    verify,
    volumes,
)
from snapgroup.cli.context import Context
from snapgroup.cli.output import Abort, abort
from snapgroup.errors import InternalError, SnapgroupError

COMMANDS = (
    volumes,
    create,
    listing,
    show,
    update,
    delete,
    check,
    revert,
    clone,
    ungroup,
    tree,
    snapshots,
    delete_snapshot,
    sync,
    recover,
    verify,
    operations,
    serve,
    daemon,
    account,
)


def build_parser(
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    parser = parser_class(
        prog="snapgroup", description="Consistent snapshot groups of a libvirt VM's disks."
    )
    parser.add_argument(
        "--connect",
        metavar="URI",
        help="libvirt URI (default: LIBVIRT_DEFAULT_URI or qemu:///system)",
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help="SQLAlchemy URL (default: SNAPGROUP_DB or sqlite:////var/lib/snapgroup/snapgroup.db)",
    )
    parser.add_argument("--json", action="store_true", help="print the seed API's JSON documents")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another operation on the same VM (default: fail at once)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every tool call")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    context_factory: Callable[[argparse.Namespace], Context] | None = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=err,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return execute(args, out=out, err=err, context_factory=context_factory or Context.from_args)


def execute(
    args: argparse.Namespace,
    *,
    out: TextIO,
    err: TextIO,
    context_factory: Callable[[argparse.Namespace], Context],
) -> int:
    """Run parsed arguments: here, or in the daemon (snapgroup.cli.command_server)."""
    run: Callable[[argparse.Namespace, Context], int] = args.run
    try:
        ctx = context_factory(args)
        ctx.out, ctx.err = out, err
        if not getattr(args, "skip_auto_recover", False):
            ctx.engine.recover()  # every command starts from a consistent state
        return run(args, ctx)
    except Abort as stop:
        return int(stop.code or 1)
    except SnapgroupError as error:
        try:
            abort(error, as_json=args.json, out=out, err=err)
        except Abort as stop:
            return int(stop.code or 1)
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130
    except Exception as exc:  # the last line of defence: still the seed's error shape
        logging.getLogger("snapgroup").debug("unexpected error", exc_info=True)
        try:
            abort(
                InternalError(f"{type(exc).__name__}: {exc}"), as_json=args.json, out=out, err=err
            )
        except Abort as stop:
            return int(stop.code or 1)
