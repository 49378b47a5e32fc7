"""ZStack's query language, parsed (pure): what `GET .../volume-snapshots/group` and
`snapgroup list` take. The store compiles a Query into SQL (store/group_query.py);
rest/query.py evaluates one over Group objects (the reference the SQL is tested against).

`q=<field><op><value>` (repeatable, all must hold), ops `=` `!=` `>` `<` `>=` `<=`
`?=` (in, comma-separated) `!?=` (not in) `~=` `!~=` (SQL LIKE: `%` any run, `_` one
character; case-insensitive, as with ZStack's MySQL; on text and integer fields) and
`<field> is null` / `<field> not null`. Fields are the inventory's;
`volumeSnapshotRefs.<field>` holds when any ref of the group matches. `limit` (default
1000), `start`, `count=true` (only the total), `replyWithCount=true` (both),
`sort=+field|-field`, `fields=a,b` (only those keys). Dates compare as times: ISO 8601,
the seed's "Nov 14, 2017 10:20:57 PM" (host time, as shown) or epoch milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from snapgroup.domain.errors import InvalidArgument

DEFAULT_LIMIT = 1000  # ZStack's


class Kind(Enum):
    TEXT = "text"
    INT = "int"
    BOOL = "bool"
    DATE = "date"


GROUP_FIELDS: dict[str, Kind] = {
    "uuid": Kind.TEXT,
    "name": Kind.TEXT,
    "description": Kind.TEXT,
    "vmInstanceUuid": Kind.TEXT,
    "snapshotCount": Kind.INT,
    "createDate": Kind.DATE,
    "lastOpDate": Kind.DATE,
}
REF_FIELDS: dict[str, Kind] = {
    "volumeSnapshotUuid": Kind.TEXT,
    "volumeSnapshotGroupUuid": Kind.TEXT,
    "deviceId": Kind.INT,
    "snapshotDeleted": Kind.BOOL,
    "volumeUuid": Kind.TEXT,
    "volumeName": Kind.TEXT,
    "volumeType": Kind.TEXT,
    "volumeSnapshotInstallPath": Kind.TEXT,
    "volumeSnapshotName": Kind.TEXT,
    "createDate": Kind.DATE,
    "lastOpDate": Kind.DATE,
}
REFS = "volumeSnapshotRefs."
COMPARISONS = ("=", "!=", ">", "<", ">=", "<=")
_SORTABLE = "|".join(GROUP_FIELDS)
SORT_PATTERN = rf"^[ +-]?(?:{_SORTABLE})$"  # " ": a "+" sent unencoded
_FIELD = rf" *(?:{_SORTABLE}|volumeSnapshotRefs) *"
FIELDS_PATTERN = rf"^{_FIELD}(?:,{_FIELD})*$"
# Longest first where one operator starts another ("!?=" before "!=", ">=" before ">").
_OPS = r"!\?=|!~=|!=|>=|<=|~=|\?=|=|>|<"
_CONDITION = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_.]*)\s*"
    rf"(?:(?P<null>\s(?:is|not)\s+null)\s*$|(?P<op>{_OPS})(?P<value>.*)$)",
    re.DOTALL,
)
_FIELD_NAMES = "|".join([*GROUP_FIELDS, *(re.escape(REFS + f) for f in REF_FIELDS)])
# The syntax of a condition, for the OpenAPI document (its value must still fit the
# field's kind: a number for snapshotCount, a date for createDate, ...).
CONDITION_PATTERN = rf"^\s*(?:{_FIELD_NAMES})\s*(?:\s(?:is|not)\s+null\s*|(?:{_OPS})[\s\S]*)$"


def _seed_date(value: str) -> datetime:
    return datetime.strptime(value, "%b %d, %Y %I:%M:%S %p")


def _epoch_ms(value: str) -> datetime:
    if not (value.isascii() and value.isdigit()):
        raise ValueError(value)
    return datetime.fromtimestamp(int(value) / 1000, UTC)


def _parse_date(text: str) -> datetime:
    value = text.strip()
    for parse in (_epoch_ms, datetime.fromisoformat, _seed_date):
        try:
            # Without a zone: the host's local time, the zone the inventories are shown in.
            return parse(value).astimezone(UTC)
        except (ValueError, OverflowError, OSError):  # out-of-range years and times too
            continue
    raise InvalidArgument(f"{text!r} is not a date (ISO 8601, 'Nov 14, 2017 10:20:57 PM', ms)")


def _parse_value(kind: Kind, text: str, field: str) -> Any:
    if kind is Kind.TEXT:
        return text
    if kind is Kind.DATE:
        return _parse_date(text)
    if kind is Kind.INT:
        try:
            return int(text.strip())
        except ValueError:
            raise InvalidArgument(f"{field} compares with an integer, not {text!r}") from None
    if text.strip().lower() not in ("true", "false"):
        raise InvalidArgument(f"{field} compares with true or false, not {text!r}")
    return text.strip().lower() == "true"


@dataclass(frozen=True)
class Condition:
    field: str  # a group field, or REFS + a ref field
    kind: Kind
    op: str  # one of COMPARISONS, "?=", "!?=", "~=", "!~=", "is null", "not null"
    # Parsed to the field's kind (dates: aware UTC); a list for ?= / !?=; the LIKE
    # pattern as sent for ~= / !~=; None for the null tests.
    value: Any

    @property
    def ref_field(self) -> str | None:
        """The ref field a volumeSnapshotRefs.<field> condition tests, else None."""
        return self.field[len(REFS) :] if self.field.startswith(REFS) else None


def parse_condition(
    text: str,
    fields: Mapping[str, Kind] = GROUP_FIELDS,
    refs: Mapping[str, Kind] = REF_FIELDS,
) -> Condition:
    """One condition on `fields` (and `volumeSnapshotRefs.<refs>`): a group's by default;
    the other resources' queries name theirs."""
    match = _CONDITION.match(text)
    if match is None:
        raise InvalidArgument(
            f"invalid query condition {text!r}: expected <field><op><value> with op one of "
            "= != > < >= <= ?= !?= ~= !~=, or '<field> is null' / '<field> not null'"
        )
    field = match["name"]
    if field.startswith(REFS) and field[len(REFS) :] in refs:
        kind = refs[field[len(REFS) :]]
    elif field in fields:
        kind = fields[field]
    else:
        known = [*fields, *(REFS + f for f in refs)]
        raise InvalidArgument(f"unknown query field {field!r}; queryable: {', '.join(known)}")
    if match["null"]:
        return Condition(field, kind, " ".join(match["null"].split()), None)
    op, raw = match["op"], match["value"]  # the value is not trimmed: spaces may matter
    if op in ("?=", "!?="):
        return Condition(field, kind, op, [_parse_value(kind, v, field) for v in raw.split(",")])
    if op in ("~=", "!~="):
        if kind not in (Kind.TEXT, Kind.INT):
            raise InvalidArgument(f"{field} is a {kind.value}: ~= and !~= match text and numbers")
        return Condition(field, kind, op, raw)
    if kind is Kind.BOOL and op not in ("=", "!="):
        raise InvalidArgument(f"{field} is true or false: only = and != compare it")
    return Condition(field, kind, op, _parse_value(kind, raw, field))


def like_regex(pattern: str) -> re.Pattern[str]:
    """SQL LIKE as a regular expression (case-insensitive, no escape character)."""
    parts = (".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile("^" + "".join(parts) + "$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Query:
    conditions: tuple[Condition, ...] = ()
    limit: int = DEFAULT_LIMIT
    start: int = 0
    count: bool = False
    reply_with_count: bool = False
    sort_by: str | None = None
    descending: bool = False
    fields: tuple[str, ...] | None = None

    @property
    def needs_refs(self) -> bool:
        """Whether the reply shows refs (or their count): else they are not loaded."""
        return self.fields is None or bool({"volumeSnapshotRefs", "snapshotCount"} & {*self.fields})

    def reply(self, inventories: Sequence[Mapping[str, Any]], total: int | None) -> dict[str, Any]:
        """The reply document for one page of inventories and the number matched
        (None when neither count nor replyWithCount asked for it)."""
        if self.count:
            return {"total": total}
        shown = [dict(inv) for inv in inventories]
        if self.fields is not None:
            shown = [{k: inv[k] for k in self.fields if k in inv} for inv in shown]
        reply: dict[str, Any] = {"inventories": shown}
        if self.reply_with_count:
            reply["total"] = total
        return reply


def patterns(schema: Mapping[str, Kind]) -> tuple[str, str, str]:
    """(condition, sort, fields) patterns of a resource's query, for OpenAPI."""
    names = "|".join(re.escape(f) for f in schema)
    condition = rf"^\s*(?:{names})\s*(?:\s(?:is|not)\s+null\s*|(?:{_OPS})[\s\S]*)$"
    field = rf" *(?:{names}) *"
    return condition, rf"^[ +-]?(?:{names})$", rf"^{field}(?:,{field})*$"


# Half of SQL's 64-bit range: a page's end (start + limit) stays within it too.
SQL_INT_MAX = 2**62


def _flag(value: str | None) -> bool:
    """Java's Boolean.valueOf, as ZStack reads these flags: only "true" is true."""
    return value is not None and value.strip().lower() == "true"


def parse_query(
    *,
    q: Sequence[str] = (),
    limit: int | None = None,
    start: int | None = None,
    count: str | None = None,
    reply_with_count: str | None = None,
    sort: str | None = None,
    fields: str | None = None,
    schema: Mapping[str, Kind] = GROUP_FIELDS,
    refs: Mapping[str, Kind] = REF_FIELDS,
) -> Query:
    """A group query by default; another resource's with its `schema` (and no refs)."""
    if limit is not None and limit < 0:
        raise InvalidArgument("'limit' must not be negative")
    if start is not None and start < 0:
        raise InvalidArgument("'start' must not be negative")
    sort_by, descending = None, False
    if sort is not None:
        # A client that does not encode "+" sends a space (form encoding): also ascending.
        text = sort.strip(" ")
        descending = text.startswith("-")
        sort_by = text.lstrip("+-").strip()
        if sort_by not in schema:
            sortable = ", ".join(schema)
            raise InvalidArgument(f"cannot sort by {sort_by!r}; sortable: {sortable}")
    wanted = None
    if fields is not None:
        wanted = tuple(f.strip() for f in fields.split(",") if f.strip())
        nested = {"volumeSnapshotRefs"} if refs else set()
        unknown = [f for f in wanted if f not in schema and f not in nested]
        if not wanted or unknown:
            raise InvalidArgument(f"'fields' names unknown or no fields: {fields!r}")
    return Query(
        conditions=tuple(parse_condition(c, schema, refs) for c in q),
        # Past SQL's 64-bit integers a page means the same as at their bound (every row, or
        # none): a driver would overflow on the literal (the OpenAPI fuzz sent 2**63).
        limit=DEFAULT_LIMIT if limit is None else min(limit, SQL_INT_MAX),
        start=min(start or 0, SQL_INT_MAX),
        count=_flag(count),
        reply_with_count=_flag(reply_with_count),
        sort_by=sort_by,
        descending=descending,
        fields=wanted,
    )
