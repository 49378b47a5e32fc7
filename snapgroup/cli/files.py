"""snapgroup files GROUP|--backup ID --at DIR [--disk vdb] [--fs NAME] [PATH]."""

from __future__ import annotations

import argparse
import stat
from typing import TYPE_CHECKING, Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table
from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.guest_files import iso_time

if TYPE_CHECKING:
    from snapgroup.ops.guest_sources import FilesSource

SOURCE_HELP = (
    "Reads a group's disks (GROUP) or a backup's (--backup ID --at DIR, its incremental "
    "chain read in place) as they were at that point in time, read-only, inside "
    "libguestfs's appliance: the guest's filesystem is never parsed by the host's kernel, "
    "and the VM keeps running, untouched."
)


def add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backup", metavar="ID", help="a backup instead of a group")
    parser.add_argument("--at", metavar="DIR", help="with --backup: the repository")
    parser.add_argument("--disk", metavar="TARGET", help="only this disk (vda, vdb...)")
    parser.add_argument(
        "--fs", metavar="NAME", help="the filesystem, as listed: vdb, vdb1, vg0/root"
    )


def source_of(args: argparse.Namespace, words: list[str]) -> tuple[FilesSource, list[str]]:
    """The source and the positional words after it (GROUP first unless --backup)."""
    from snapgroup.ops.guest_sources import FilesSource  # with the engine, not for --help

    if args.backup is not None:
        return FilesSource(backup=args.backup, at=args.at), words
    if not words:
        raise InvalidArgument("name a GROUP, or --backup ID --at DIR")
    return FilesSource(group=words[0]), words[1:]


def add_parser(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A command whose positionals may come on both sides of its options (`files GROUP
    --disk vdb /etc`): argparse's intermixed parsing, for this command's parser only."""
    base: type[argparse.ArgumentParser] = sub._parser_class

    class Intermixed(base):  # type: ignore[valid-type,misc]
        _mixing = False

        def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
            if self._mixing:  # parse_known_intermixed_args calls back in here
                return super().parse_known_args(args, namespace)
            self._mixing = True
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self._mixing = False

    sub._parser_class = Intermixed
    try:
        parser: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    finally:
        sub._parser_class = base
    return parser


def register(sub: Any) -> None:
    parser = add_parser(
        sub,
        "files",
        usage="%(prog)s (GROUP | --backup ID --at DIR) [--disk TARGET] [--fs NAME] [PATH]",
        description="Without PATH: the disks' partitions, filesystems and LVM volumes. "
        "With PATH: that directory (name, type, size, mtime, mode). " + SOURCE_HELP,
    )
    parser.add_argument("words", nargs="*", metavar="[GROUP] [PATH]")
    add_source(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    source, rest = source_of(args, list(args.words))
    if len(rest) > 1:
        raise InvalidArgument(f"one PATH at most (got {len(rest)})")
    path = rest[0] if rest else None
    listing = ctx.engine.files(source, disk=args.disk, fs=args.fs, path=path)
    if ctx.as_json:
        print_json(listing.to_dict(), ctx.out)
        return 0
    if listing.filesystem is None:
        found = [
            (f.name, f.kind, ",".join(f.disks), f.fstype or "-", f.size, f.label or "-")
            for f in listing.filesystems
        ]
        table(found, ["NAME", "KIND", "DISKS", "TYPE", "SIZE", "LABEL"], ctx.out)
        return 0
    rows = [
        (
            stat.filemode(e.st_mode),
            e.size,
            iso_time(e.mtime_ns),
            e.name + (f" -> {e.target}" if e.target is not None else ""),
        )
        for e in listing.entries
    ]
    table(rows, ["MODE", "SIZE", "MTIME", "NAME"], ctx.out)
    return 0
