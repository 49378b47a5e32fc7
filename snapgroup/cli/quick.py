"""`snapgroup list` and `show` answered without the engine, when they can be: on the
embedded store (a plain sqlite:/// URL) whose schema this code made, for the lines
below. Reading there with sqlite3 takes a bare interpreter's start-up plus the query,
about `virsh list`'s time; the engine's imports alone (SQLAlchemy, SQLModel) cost ~20
of those. The answer is the engine's, byte for byte (tests compare the two).

Anything else, or anything unexpected on the way (another URL, an older store, a
group not found, an option this parser does not know, -v), answers None before
writing a byte, and the command runs on the engine as always: it alone explains errors."""

from __future__ import annotations

import io

from snapgroup.cli import group_text
from snapgroup.domain import documents

TYPE_CHECKING = False  # not typing's: importing typing costs ~14 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, TextIO

    from snapgroup.store.quick_read import QuickStore

COMMANDS = ("list", "show")
_VALUED = {"--db", "--connect", "--wait", "--limit", "--start"}
_HEX = frozenset("0123456789abcdef")


class _Unsure(Exception):
    """This line is the engine's to answer."""


def _options(argv: Sequence[str]) -> tuple[str, dict[str, str], list[str]]:
    """The command, its options' last values (flags: ""), its positionals."""
    command, values, positionals = "", {}, []
    tokens = iter(argv)
    for token in tokens:
        name, eq, value = token.partition("=")
        if name in _VALUED:
            if not eq:
                value = next(tokens, "-")
            if value.startswith("-") or (name in ("--limit", "--start") and not command):
                raise _Unsure
            values[name] = value
        elif token == "--json":
            values[token] = ""
        elif token.startswith("-") or (not command and token not in COMMANDS):
            raise _Unsure  # -h, -v, --vm, abbreviations, `--`: argparse's and the engine's
        elif not command:
            command = token
        else:
            positionals.append(token)
    return command, values, positionals


def answer(argv: Sequence[str], out: TextIO, err: TextIO, environ: Mapping[str, str]) -> int | None:
    """The command's exit status, its output written; None: not answered, nothing written."""
    try:
        command, values, positionals = _options(argv)
        if "--wait" in values:
            float(values["--wait"])  # as argparse checks it
    except (_Unsure, ValueError):
        return None
    if not command:
        return None
    from snapgroup.store import quick_read

    store = _clean_store(values.get("--db"), environ)
    if store is None:
        return None
    text, note = io.StringIO(), ""
    try:
        with store:
            if command == "list":
                note = _list(store, values, positionals, "--json" in values, text)
            elif "--limit" in values or "--start" in values:
                raise _Unsure  # not show's options: argparse's usage error
            else:
                _show(store, positionals, "--json" in values, text)
    except (_Unsure, ValueError, quick_read.Unreadable):
        return None
    document = text.getvalue()
    # In pieces, as the engine's printing writes: one big write that a reader leaves
    # half-read (`| head`) is cut short without an error by CPython's buffered writer,
    # and the command would end 0 instead of as SIGPIPE says (launch._die_of_sigpipe).
    for piece in range(0, len(document), 8192):
        out.write(document[piece : piece + 8192])
    err.write(note)
    return 0


def _clean_store(db: str | None, environ: Mapping[str, str]) -> QuickStore | None:
    """The store `--db` or the environment names, when sqlite3 can read it as the
    engine would after its recovery: this code's schema, no operation unfinished."""
    from snapgroup.store import quick_read

    url = db or environ.get("SNAPGROUP_DB") or quick_read.DEFAULT_URL
    path = quick_read.database_path(url)
    store = None if path is None else quick_read.open_current(path)
    if store is None:
        return None
    try:
        if not store.unfinished():
            return store
    except quick_read.Unreadable:
        pass
    store.close()
    return None


def journal_clean(db: str | None, environ: Mapping[str, str]) -> bool:
    """Whether a command that reads no group (`backups`) may skip the engine's recovery:
    the store is one this code reads alone and nothing in its journal is unfinished."""
    store = _clean_store(db, environ)
    if store is None:
        return False
    store.close()
    return True


def _list(
    store: QuickStore, values: dict[str, str], positionals: list[str], as_json: bool, out: TextIO
) -> str:
    limit, start = int(values.get("--limit", "100")), int(values.get("--start", "0"))
    if positionals or limit < 0 or start < 0:
        raise _Unsure
    views, total = store.page(limit, start)
    uuids = [v[0] for v in views]
    date = _date_text()
    if as_json:
        docs = documents.documents_of_rows(views, store.refs(uuids), date)
        _json({"inventories": docs}, out)
    else:
        counts = store.ref_counts(uuids)
        rows = [(v[0], v[1], v[3], counts.get(v[0], 0), date(v[4])) for v in views]
        group_text.table(rows, group_text.SUMMARY_HEADERS, out)
    return group_text.page_note(len(views), total, start)


def _show(store: QuickStore, positionals: list[str], as_json: bool, out: TextIO) -> None:
    if len(positionals) != 1:
        raise _Unsure
    uuid = _uuid(positionals[0])
    views = store.groups([uuid])
    if not views:
        raise _Unsure  # not found: the engine's error
    (doc,) = documents.documents_of_rows(views, store.refs([uuid]), _date_text())
    if as_json:
        _json({"inventory": doc}, out)
    else:
        group_text.group_detail(doc, out)


def _uuid(value: str) -> str:
    """As domain/validate.py's parse_uuid takes it (32 hex digits, or dashed 8-4-4-4-12);
    anything else is the engine's to refuse."""
    text = value.strip().lower()
    if len(text) == 36 and all(text[i] == "-" for i in (8, 13, 18, 23)):
        text = text.replace("-", "")
    if len(text) != 32 or not _HEX.issuperset(text):
        raise _Unsure
    return text


def _date_text() -> Any:
    """A raw SQLite date (as SQLAlchemy wrote it: UTC wall time) -> the seed's text."""
    from datetime import datetime

    made: dict[str, str] = {}

    def text(raw: str) -> str:
        found = made.get(raw)
        if found is None:
            found = made[raw] = documents.zstack_date(datetime.fromisoformat(raw))
        return found

    return text


def _json(document: dict[str, Any], out: TextIO) -> None:
    import json

    json.dump(document, out, indent=2, ensure_ascii=False)
    out.write("\n")
