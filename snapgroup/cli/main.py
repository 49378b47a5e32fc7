"""`snapgroup` run in this process: every command of commands.py, and `daemon`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from snapgroup.cli import commands, daemon
from snapgroup.cli.commands import USAGE_STATUS, UsageError, execute, wants_json
from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json
from snapgroup.domain.errors import InvalidArgument


def build_parser(
    parser_class: type[argparse.ArgumentParser] = commands._Parser,
) -> argparse.ArgumentParser:
    return commands.build_parser(parser_class, extra=(daemon,))


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
        args = build_parser().parse_args(argv)
    except UsageError as usage:
        if not wants_json(argv):  # argparse's usage and message on stderr, status 2
            argparse.ArgumentParser.error(usage.parser, usage.message)
        print_json({"error": InvalidArgument(usage.message).to_dict()}, out)
        return USAGE_STATUS
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=err,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return execute(args, out=out, err=err, context_factory=context_factory or Context.from_args)
