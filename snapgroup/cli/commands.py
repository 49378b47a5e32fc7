"""`snapgroup` command line: global options, one module per command, one abort path.
The `daemon` command is added by main.py: the daemon (command_server.py) parses and
runs commands with this module, and never runs `daemon` itself (LOCAL_COMMANDS)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, Protocol, TextIO, cast

if TYPE_CHECKING:
    from snapgroup.cli.context import Context


class Command(Protocol):
    """A command module: it adds its subparser, whose defaults name its run()."""

    def register(self, sub: Any) -> None: ...


class Entry(NamedTuple):
    """A command: the module (snapgroup.cli.<module>) that adds its arguments and run(),
    and the one line `snapgroup --help` shows for it (None: hidden, not listed)."""

    module: str
    summary: str | None


# Every command, in the order `snapgroup --help` lists them. A command line imports only
# its own command's module (build_parser's `command`), and `snapgroup --help` none
# (`stubs`): what the others need (the REST stack, backups, policies) is never loaded.
COMMANDS: dict[str, Entry] = {
    "volumes": Entry("volumes", "list a VM's disks and what a group would cover"),
    "create": Entry("create", "take a snapshot group of every disk of a VM"),
    "list": Entry("listing", "list snapshot groups (oldest first, one page)"),
    "show": Entry("show", "show one snapshot group"),
    "update": Entry("update", "rename or describe a snapshot group"),
    "delete": Entry("delete", "delete a group, merging its snapshots away"),
    "check": Entry("check", "check whether groups can still be reverted to"),
    "revert": Entry("revert", "restore a stopped VM's volumes to a group's point in time"),
    "clone": Entry(
        "clone", "define a new VM on a group's point in time (the original keeps running)"
    ),
    "ungroup": Entry("ungroup", "drop a group and keep its snapshots (see `snapshots`)"),
    "tree": Entry("tree", "show a VM's groups as a tree: which came from which, which is current"),
    "snapshots": Entry("snapshots", "list a VM's volume snapshots"),
    "delete-snapshot": Entry(
        "delete_snapshot",
        "delete one volume snapshot, merging it away; its group ref is kept and marked "
        "snapshotDeleted (the group becomes unavailable)",
    ),
    "sync": Entry(
        "sync",
        "record disks attached or detached, removed volumes and undefined VMs since the "
        "last look; report tops and chains that differ (every operation does this "
        "first; data files are never removed)",
    ),
    "recover": Entry("recover", "finish or roll back interrupted operations"),
    "verify": Entry("verify", "compare the metadata with reality"),
    "operations": Entry("operations", "list the operation journal"),
    "hosts": Entry("hosts", "list the hosts of the store, their leases and their VMs"),
    "policy": Entry("policy", "snapshot policies: groups taken and pruned by themselves"),
    "autosnap": Entry(
        "autosnap", "one policy pass: take the groups that are due, prune beyond the keep counts"
    ),
    "protect": Entry(
        "protect", "protect a group: never pruned by a policy, a delete of it refused"
    ),
    "unprotect": Entry("protect", "undo `protect`: the group may be deleted (and pruned) again"),
    "install-units": Entry(
        "install_units",
        "install and enable the systemd units (autosnap timer every 15 min, daemon)",
    ),
    "libvirt-hook": Entry(
        "libvirt_hook", "libvirt's qemu hook: refuse a migration while an operation holds the VM"
    ),
    "export": Entry("export", "copy a group to a backup repository (incremental when it can be)"),
    "backups": Entry("backups", "list the backups in a repository"),
    "verify-backup": Entry("verify_backup", "checksums and qemu-img check of a repository's files"),
    "restore": Entry("restore", "a new VM (or disk images) from any backup"),
    "prune-backups": Entry(
        "prune_backups", "keep a VM's N newest backups, merging older ones into their successors"
    ),
    "files": Entry("files", "a group's or a backup's filesystems, or a directory in one"),
    "extract": Entry("extract", "copy files or trees out of a group or a backup"),
    "mount": Entry("mount", "expose a group's or a backup's filesystem read-only at a directory"),
    "umount": Entry("mount", "undo snapgroup mount"),
    "instant-follow": Entry("instant_follow", None),
    "serve": Entry("serve", "serve the seed's REST API (ZStack's VolumeSnapshotGroup API)"),
    "account": Entry("account", "accounts of the REST API (`snapgroup serve`)"),
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
    extra: Mapping[str, Entry] = {},
    command: str | None = None,
    stubs: bool = False,
) -> argparse.ArgumentParser:
    """The parser of every command of COMMANDS (and `extra`), or, when `command` names one
    (see command_of), of that command alone: it parses that command's lines exactly as
    the whole parser does, importing only its module. `stubs`: every command by its
    summary alone, no module imported, for what argparse answers before it reaches a
    command's arguments (`--help`, no command, an unknown one)."""
    catalog = {**COMMANDS, **extra}
    parser = parser_class(
        prog="snapgroup", description="Consistent snapshot groups of a libvirt VM's disks."
    )
    add_global_options(parser, suppress=False)
    sub = _Summarised(
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), catalog
    )
    if stubs:
        for name in catalog:
            sub.add_parser(name)
    else:
        names = catalog if command is None else [command]
        for module in dict.fromkeys(catalog[name].module for name in names):  # mount, umount
            loaded = cast(Command, importlib.import_module(f"snapgroup.cli.{module}"))
            loaded.register(sub)
    for command_parser in _all_subparsers(parser):
        add_global_options(command_parser, suppress=True)
    return parser


class _Summarised:
    """The subparsers action as a command module sees it: each command's parser gets its
    one-line help from the catalog."""

    def __init__(
        self, action: argparse._SubParsersAction[Any], catalog: Mapping[str, Entry]
    ) -> None:
        self._action, self._catalog = action, catalog

    @property
    def _parser_class(self) -> type[argparse.ArgumentParser]:
        return self._action._parser_class

    @_parser_class.setter  # cli/files.py makes its commands' parsers intermixed
    def _parser_class(self, value: type[argparse.ArgumentParser]) -> None:
        self._action._parser_class = value

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        summary = self._catalog[name].summary
        if summary is not None:
            kwargs["help"] = summary
        # A hidden command gets no help at all: argparse (3.11) lists help=SUPPRESS as
        # "==SUPPRESS==" among the commands; without help it is not listed.
        parser: argparse.ArgumentParser = self._action.add_parser(name, **kwargs)
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
    """Run parsed arguments: here, or in the daemon (snapgroup.cli.command_server).
    The warnings the command's operations give (a VM taken over from another host) go
    with its result: under --json a "warnings" list in its document (output.print_json),
    else a `warning: ...` line each on stderr once it is done."""
    from snapgroup.ops.notices import collecting

    with collecting() as warnings:
        status = _execute(args, out=out, err=err, context_factory=context_factory)
    if not args.json:
        for warning in warnings:
            err.write(f"warning: {warning}\n")
    return status


def _execute(
    args: argparse.Namespace,
    *,
    out: TextIO,
    err: TextIO,
    context_factory: Callable[[argparse.Namespace], Context],
) -> int:
    # Loaded with the command (`snapgroup --help` and usage errors never get here).
    import logging

    from snapgroup.cli.output import Abort, abort
    from snapgroup.domain.errors import InternalError, SnapgroupError

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
