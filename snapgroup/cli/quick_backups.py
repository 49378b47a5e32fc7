"""`snapgroup backups --at DIR [--vm VM] [--tree] [--json]` answered without argparse
or the engine when it can be, as quick.py answers `list` and `show`: the command line
read here by hand, then the listing of backups.py itself (ops/backup_listing.scan over
adapters/backup_scan.py, every manifest read by manifest_rules.parse_manifest, printed
by backup_text.py). argparse (with re's enums, gettext), the context and output
modules (logging) and BackupRepo (hashlib, threads, shutil) are ~20 ms of start-up,
more than the listing itself with two `virsh list`s (issue 20).

What this reader cannot take exactly as argparse does (an abbreviation, -h, -v, `--`,
a value that starts with '-' or is empty, anything unknown) and a journal that needs
recovering first (backups.py: the engine recovers) answer None before a byte is
written, and the command runs as always. Tests compare both answers byte for byte."""

from __future__ import annotations

import io

from snapgroup.adapters.backup_scan import RepositoryReader
from snapgroup.cli import backup_text
from snapgroup.domain.errors import SnapgroupError
from snapgroup.ops.backup_listing import scan

TYPE_CHECKING = False  # not typing's: importing typing costs ~3 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, TextIO

COMMAND = "backups"
_GLOBAL = frozenset({"--connect", "--db", "--wait"})  # valued; either side of the command
_OWN = frozenset({"--at", "--vm"})  # valued; after it


class _Unsure(Exception):
    """This line is argparse's to read."""


def _options(argv: Sequence[str]) -> dict[str, str]:
    """The options' last values (flags: ""), as argparse reads the line, or _Unsure."""
    values: dict[str, str] = {}
    command = False
    tokens = iter(argv)
    for token in tokens:
        name, eq, value = token.partition("=")
        if name in _GLOBAL or (command and name in _OWN):
            if not eq:
                value = next(tokens, "")
            if not value or value.startswith("-"):
                raise _Unsure
            values[name] = value
        elif token == "--json" or (command and token == "--tree"):
            values[token] = ""
        elif token == COMMAND and not command:
            command = True
        else:  # -h, -v, an abbreviation, `--`, a positional, an option before its place
            raise _Unsure
    if not command or "--at" not in values:
        raise _Unsure  # argparse's usage error
    float(values.get("--wait", "0"))  # ValueError: argparse's usage error too
    return values


def answer(argv: Sequence[str], out: TextIO, err: TextIO, environ: Mapping[str, str]) -> int | None:
    """The command's exit status, its output written; None: not answered, nothing written."""
    try:
        values = _options(argv)
    except (_Unsure, ValueError):
        return None
    from snapgroup.cli.quick import journal_clean

    text, notes = io.StringIO(), io.StringIO()
    try:
        if not journal_clean(values.get("--db"), environ):
            return None  # the engine recovers first
        status = _listing(values, text, notes)
    except KeyboardInterrupt:
        err.write("interrupted\n")  # as commands.execute says it
        return 130
    except Exception:  # the engine's to explain (SYS.1001); nothing written
        return None
    err.write(notes.getvalue())  # the warnings before the table, as the engine writes them
    document = text.getvalue()
    # In pieces, as the engine's printing writes (quick.py says why: `| head`).
    for piece in range(0, len(document), 8192):
        out.write(document[piece : piece + 8192])
    return status


def _listing(values: dict[str, str], out: TextIO, err: TextIO) -> int:
    as_json = "--json" in values
    try:
        found, damaged = scan(RepositoryReader, values["--at"], values.get("--vm"))
    except SnapgroupError as error:  # as output.abort says it
        if as_json:
            _json({"error": error.to_dict()}, out)
        else:
            err.write(f"error {error.code}: {error.details}\n")
            cause = error.cause
            while cause is not None:
                err.write(f"  caused by {cause.code}: {cause.details}\n")
                cause = cause.cause
        return 1
    if as_json:
        _json(backup_text.document(found, damaged), out)
    else:
        backup_text.write(found, damaged, tree="--tree" in values, out=out, err=err)
    return 0


def _json(document: dict[str, Any], out: TextIO) -> None:
    """As output.print_json writes it (no operation ran here: no warnings to add)."""
    import json

    json.dump(document, out, indent=2, ensure_ascii=False)
    out.write("\n")
