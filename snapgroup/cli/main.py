"""`snapgroup` run in this process: every command of commands.py, and `daemon`. Only
the module of the command named is imported (commands.command_of), and the engine only
when the command asks for it (context.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from snapgroup.cli import commands
from snapgroup.cli.commands import USAGE_STATUS, UsageError, execute, wants_json

if TYPE_CHECKING:
    from snapgroup.cli.context import Context

# Commands only this process runs, never the daemon's parser (command_server.py).
LOCAL = {
    "daemon": commands.Entry(
        "daemon", "keep an engine open so that `snapgroup` commands start fast"
    )
}


def build_parser(
    parser_class: type[argparse.ArgumentParser] = commands._Parser,
    *,
    command: str | None = None,
    stubs: bool = False,
) -> argparse.ArgumentParser:
    return commands.build_parser(parser_class, extra=LOCAL, command=command, stubs=stubs)


def main(
    argv: Sequence[str] | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    context_factory: Callable[[argparse.Namespace], Context] | None = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        names = [*commands.COMMANDS, *LOCAL]
        command = commands.command_of(argv, names)
        # No command named anywhere: argparse answers before any command's arguments.
        stubs = command is None and not set(argv) & set(names)
        args = build_parser(command=command, stubs=stubs).parse_args(argv)
    except UsageError as usage:
        if not wants_json(argv):  # argparse's usage and message on stderr, status 2
            argparse.ArgumentParser.error(usage.parser, usage.message)
        from snapgroup.cli.output import print_json
        from snapgroup.domain.errors import InvalidArgument

        print_json({"error": InvalidArgument(usage.message).to_dict()}, out)
        return USAGE_STATUS
    # The command's stack, once argparse has let it through (not for --help).
    import logging

    from snapgroup.cli.context import Context

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=err,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return execute(args, out=out, err=err, context_factory=context_factory or Context.from_args)
