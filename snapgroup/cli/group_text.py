"""A group as `snapgroup list` and `show` print it, from its inventory document (or, for
a list, its summary row). Standard library only: the start-up fast path (quick.py)
prints with these, as every command does through output.py."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs ~14 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, TextIO

SUMMARY_HEADERS = ("UUID", "NAME", "VM", "SNAPSHOTS", "CREATED")
_DETAIL_KEYS = (
    "uuid",
    "name",
    "description",
    "vmInstanceUuid",
    "snapshotCount",
    "createDate",
    "lastOpDate",
    "consistencyType",
    "frozenFilesystems",
    "freezeMillis",
    "consistencyNote",
    "protected",
    "policy",
    "policyLabel",
    "withMemory",
)


def table(rows: Sequence[Sequence[object]], headers: Sequence[str], out: TextIO) -> None:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def group_detail(inv: dict[str, Any], out: TextIO) -> None:
    """The group's fields, one a line, then its refs as a table."""
    for key in _DETAIL_KEYS:
        value = inv[key]
        if isinstance(value, list):
            value = ", ".join(value) or None
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        out.write(f"{key + ':':<19}{'-' if value is None else value}\n")
    m = inv["memory"]
    if m is not None:
        out.write(
            f"{'memory:':<19}{m['file']} ({m['size']} bytes, {m['mode']}, sha256 {m['sha256']})\n"
        )
    rows = [
        (
            r["deviceId"],
            r["volumeType"],
            r["volumeName"],
            r["volumeSnapshotUuid"],
            "yes" if r["snapshotDeleted"] else "no",
            r["volumeSnapshotInstallPath"],
        )
        for r in inv["volumeSnapshotRefs"]
    ]
    table(rows, ["DEV", "TYPE", "VOLUME", "SNAPSHOT", "DELETED", "INSTALL PATH"], out)


def page_note(shown: int, total: int, start: int) -> str:
    """`list`'s line on stderr when groups are left after the page ("" when none are)."""
    if start + shown >= total:
        return ""
    return (
        f"{shown} of {total} groups shown (from {start}); "
        f"--start {start + shown} for the next page, --limit for more\n"
    )
