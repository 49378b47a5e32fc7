"""ZStack's query language for GET .../volume-snapshots/group, over Group objects.

`q=<field><op><value>` (repeatable, all must hold), ops `=` `!=` `>` `<` `>=` `<=`
`?=` (in, comma-separated) `!?=` (not in) `~=` `!~=` (SQL LIKE: `%` any run, `_` one
character; case-insensitive, as with ZStack's MySQL) and `<field> is null` / `<field>
not null`. Fields are the inventory's; `volumeSnapshotRefs.<field>` holds when any ref
of the group matches. `limit` (default 1000), `start`, `count=true` (only the total),
`replyWithCount=true` (both), `sort=+field|-field`, `fields=a,b` (only those keys).
Dates compare as times: ISO 8601, the seed's "Nov 14, 2017 10:20:57 PM" (host time, as
shown) or epoch milliseconds.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from snapgroup.errors import InvalidArgument
from snapgroup.inventory import Group, GroupRef

DEFAULT_LIMIT = 1000  # ZStack's


class Kind(Enum):
    TEXT = "text"
    INT = "int"
    BOOL = "bool"
    DATE = "date"


GROUP_FIELDS: dict[str, tuple[Kind, Callable[[Group], Any]]] = {
    "uuid": (Kind.TEXT, lambda g: g.uuid),
    "name": (Kind.TEXT, lambda g: g.name),
    "description": (Kind.TEXT, lambda g: g.description),
    "vmInstanceUuid": (Kind.TEXT, lambda g: g.vm_uuid),
    "snapshotCount": (Kind.INT, lambda g: g.snapshot_count),
    "createDate": (Kind.DATE, lambda g: _utc(g.create_date)),
    "lastOpDate": (Kind.DATE, lambda g: _utc(g.last_op_date)),
}
REF_FIELDS: dict[str, tuple[Kind, Callable[[GroupRef], Any]]] = {
    "volumeSnapshotUuid": (Kind.TEXT, lambda r: r.volume_snapshot_uuid),
    "volumeSnapshotGroupUuid": (Kind.TEXT, lambda r: r.group_uuid),
    "deviceId": (Kind.INT, lambda r: r.device_id),
    "snapshotDeleted": (Kind.BOOL, lambda r: r.snapshot_deleted),
    "volumeUuid": (Kind.TEXT, lambda r: r.volume_uuid),
    "volumeName": (Kind.TEXT, lambda r: r.volume_name),
    "volumeType": (Kind.TEXT, lambda r: r.volume_type),
    "volumeSnapshotInstallPath": (Kind.TEXT, lambda r: r.install_path),
    "volumeSnapshotName": (Kind.TEXT, lambda r: r.snapshot_name),
    "createDate": (Kind.DATE, lambda r: _utc(r.create_date)),
    "lastOpDate": (Kind.DATE, lambda r: _utc(r.last_op_date)),
}
_REFS = "volumeSnapshotRefs."
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
_FIELD_NAMES = "|".join([*GROUP_FIELDS, *(re.escape(_REFS + f) for f in REF_FIELDS)])
# The syntax of a condition, for the OpenAPI document (its value must still fit the
# field's kind: a number for snapshotCount, a date for createDate, ...).
CONDITION_PATTERN = rf"^\s*(?:{_FIELD_NAMES})\s*(?:\s(?:is|not)\s+null\s*|(?:{_OPS})[\s\S]*)$"
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


def _utc(moment: datetime) -> datetime:
    """Stored times are UTC; naive ones (read back from the store) are UTC wall time."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


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


def _like(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile("^" + "".join(parts) + "$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Condition:
    field: str
    op: str  # one of _COMPARE, "?=", "!?=", "~=", "!~=", "is null", "not null"
    value: Any  # parsed to the field's kind; a list for ?= / !?=; a pattern for ~=

    def holds(self, group: Group) -> bool:
        if self.field.startswith(_REFS):
            _, get = REF_FIELDS[self.field[len(_REFS) :]]
            return any(self._test(get(r)) for r in group.refs)
        return self._test(GROUP_FIELDS[self.field][1](group))

    def _test(self, actual: Any) -> bool:
        if self.op == "is null":
            return actual is None
        if self.op == "not null":
            return actual is not None
        if actual is None:
            return False
        if self.op in ("?=", "!?="):
            return (actual in self.value) == (self.op == "?=")
        if self.op in ("~=", "!~="):
            return bool(self.value.match(str(actual))) == (self.op == "~=")
        return _COMPARE[self.op](actual, self.value)


def parse_condition(text: str) -> Condition:
    match = _CONDITION.match(text)
    if match is None:
        raise InvalidArgument(
            f"invalid query condition {text!r}: expected <field><op><value> with op one of "
            "= != > < >= <= ?= !?= ~= !~=, or '<field> is null' / '<field> not null'"
        )
    field = match["name"]
    if field.startswith(_REFS) and field[len(_REFS) :] in REF_FIELDS:
        kind = REF_FIELDS[field[len(_REFS) :]][0]
    elif field in GROUP_FIELDS:
        kind = GROUP_FIELDS[field][0]
    else:
        known = [*GROUP_FIELDS, *(_REFS + f for f in REF_FIELDS)]
        raise InvalidArgument(f"unknown query field {field!r}; queryable: {', '.join(known)}")
    if match["null"]:
        return Condition(field, " ".join(match["null"].split()), None)
    op, raw = match["op"], match["value"]  # the value is not trimmed: spaces may matter
    if op in ("?=", "!?="):
        return Condition(field, op, [_parse_value(kind, v, field) for v in raw.split(",")])
    if op in ("~=", "!~="):
        return Condition(field, op, _like(raw))
    if kind is Kind.BOOL and op not in ("=", "!="):
        raise InvalidArgument(f"{field} is true or false: only = and != compare it")
    return Condition(field, op, _parse_value(kind, raw, field))


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

    def run(self, groups: Sequence[Group]) -> dict[str, Any]:
        """The reply document: {"inventories": [...]} (+ "total"), or {"total": n}."""
        matched = [g for g in groups if all(c.holds(g) for c in self.conditions)]
        if self.count:
            return {"total": len(matched)}
        if self.sort_by is not None:
            get = GROUP_FIELDS[self.sort_by][1]
            present = sorted(
                (g for g in matched if get(g) is not None), key=get, reverse=self.descending
            )
            matched = present + [g for g in matched if get(g) is None]  # nulls last
        page = matched[self.start : self.start + self.limit]
        inventories = [g.to_inventory() for g in page]
        if self.fields is not None:
            inventories = [{k: inv[k] for k in self.fields if k in inv} for inv in inventories]
        reply: dict[str, Any] = {"inventories": inventories}
        if self.reply_with_count:
            reply["total"] = len(matched)
        return reply


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
) -> Query:
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
        if sort_by not in GROUP_FIELDS:
            sortable = ", ".join(GROUP_FIELDS)
            raise InvalidArgument(f"cannot sort by {sort_by!r}; sortable: {sortable}")
    wanted = None
    if fields is not None:
        wanted = tuple(f.strip() for f in fields.split(",") if f.strip())
        unknown = [f for f in wanted if f not in GROUP_FIELDS and f != "volumeSnapshotRefs"]
        if not wanted or unknown:
            raise InvalidArgument(f"'fields' names unknown or no fields: {fields!r}")
    return Query(
        conditions=tuple(parse_condition(c) for c in q),
        limit=DEFAULT_LIMIT if limit is None else limit,
        start=start or 0,
        count=_flag(count),
        reply_with_count=_flag(reply_with_count),
        sort_by=sort_by,
        descending=descending,
        fields=wanted,
    )
