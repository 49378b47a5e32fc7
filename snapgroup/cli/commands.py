"""`snapgroup` command line: global options, one module per command, one abort path.
The `daemon` command is added by main.py: the daemon (command_server.py) parses and
runs commands with this module, and never runs `daemon` itself (LOCAL_COMMANDS)."""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TextIO, cast

from snapgroup.cli.output import Abort, abort
from snapgroup.domain.errors import InternalError, SnapgroupError

if TYPE_CHECKING:
    from snapgroup.cli.context import Context


class Command(Protocol):
    """A command module: it adds its subparser, whose defaults name its run()."""

    def register(self, sub: Any) -> None: ...


# Every command, in the order `--help` lists them, and the module (snapgroup.cli.<module>)
# that registers it. A command line imports only its command's module (build_parser's
# `command`): what the others need (the REST stack, backups, policies) is never loaded.
COMMANDS: dict[str, str] = {
    "volumes": "volumes",
    "create": "create",
    "list": "listing",
    "show": "show",
    "update": "update",
    "delete": "delete",
    "check": "check",
    "revert": "revert",
    "clone": "clone",
    "ungroup": "ungroup",
    "tree": "tree",
    "snapshots": "snapshots",
    "delete-snapshot": "delete_snapshot",
    "sync": "sync",
    "recover": "recover",
    "verify": "verify",
    "operations": "operations",
    "hosts": "hosts",
    "policy": "policy",
    "autosnap": "autosnap",
    "protect": "protect",
    "unprotect": "protect",
    "install-units": "install_units",
    "libvirt-hook": "libvirt_hook",
    "export": "export",
    "backups": "backups",
    "verify-backup": "verify_backup",
    "restore": "restore",
    "prune-backups": "prune_backups",
    "files": "files",
    "extract": "extract",
    "mount": "mount",
    "umount": "mount",
    "instant-follow": "instant_follow",
    "serve": "serve",
    "account": "account",
}

# argparse's status for a usage error, under --json too: it is not a failed operation (1).
USAGE_STATUS = 2


class UsageError(Exception):
    """argparse's error, raised instead of printed so that --json can shape it."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser, self.message = parser, message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes, before or after its name. After it (suppress),
    an option not given sets nothing, so a value given before the name stands (the
    subcommand's parser fills its own namespace, copied over the top-level one)."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options") if suppress else parser
    group.add_argument(
        "--connect",
        metavar="URI",
        default=default(None),
        help="libvirt URI (default: LIBVIRT_DEFAULT_URI or qemu:///system)",
    )
    group.add_argument(
        "--db",
        metavar="URL",
        default=default(None),
        help="SQLAlchemy URL (default: SNAPGROUP_DB or sqlite:////var/lib/snapgroup/snapgroup.db)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the seed API's JSON documents",
    )
    group.add_argument(
        "--wait",
        type=float,
        default=default(0.0),
        metavar="SECONDS",
        help="wait this long for another operation on the same VM (default: fail at once)",
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="log every tool call"
    )


def build_parser(
    parser_class: type[argparse.ArgumentParser] = _Parser,
    *,
    extra: Mapping[str, str] = {},
    command: str | None = None,
) -> argparse.ArgumentParser:
    """The parser of every command of COMMANDS (and `extra`, in the same shape), or, when
    `command` names one (see command_of), of that command alone: it parses that
    command's lines exactly as the whole parser does, importing only its module."""
    catalog = {**COMMANDS, **extra}
    parser = parser_class(
        prog="snapgroup", description="Consistent snapshot groups of a libvirt VM's disks."
    )
    add_global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = catalog if command is None else [command]
    for module in dict.fromkeys(catalog[name] for name in names):  # protect, unprotect: once
        loaded = cast(Command, importlib.import_module(f"snapgroup.cli.{module}"))
        loaded.register(sub)
    for command_parser in _all_subparsers(parser):
        add_global_options(command_parser, suppress=True)
    return parser


# The global options that take a value (as the next argument or after "=").
_VALUED = frozenset({"--connect", "--db", "--wait"})
_FLAGS = frozenset({"--json", "-v", "--verbose"})


def command_of(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The command of a command line, when its arguments before the command are all
    global options spelt out in full and no help is asked there: then the parser of
    that command alone (build_parser's `command`) parses it as the whole one would.
    None for anything else (an unknown or abbreviated option, -h, no command): the
    whole parser then answers, in argparse's words."""
    args = iter(argv)
    for arg in args:
        if arg in _FLAGS or ("=" in arg and arg.partition("=")[0] in _VALUED):
            continue
        if arg in _VALUED:
            if next(args, None) is None:
                return None
            continue
        return arg if arg in names else None
    return None


def _all_subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every command's parser, and its actions' (`account list`)."""
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases: once
                yield child
                yield from _all_subparsers(child)


def wants_json(argv: Sequence[str]) -> bool:
    """--json given on either side of the command, as argparse reads the command line
    (not an option's value, not after `--`); for an error argparse stops on."""
    probe = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    probe.add_argument("--json", action="store_true")
    try:
        return bool(probe.parse_known_args(list(argv))[0].json)
    except argparse.ArgumentError:  # `--json=x`: argparse says so, in its words
        return False


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
