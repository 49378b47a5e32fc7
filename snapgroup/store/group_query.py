"""A ZStack query (snapgroup.domain.zquery) compiled into one SQL query over the
groups: conditions, sort, page and count in the database, never a scan in Python.
Answers exactly what rest/query.py's evaluation in Python answers (the tests compare
them condition by condition, on SQLite and PostgreSQL).

- `volumeSnapshotRefs.<f>`: `group.uuid IN (SELECT group_uuid FROM refs WHERE ...)`,
  which the index on the ref column answers (volumeUuid, the group, the snapshot).
- Text orders as Python does (by code point): SQLite's default collation does;
  PostgreSQL's database collation may not, so `COLLATE "C"` there.
- LIKE is case-insensitive without an escape character (ZStack on MySQL): ILIKE on
  PostgreSQL with its default escape `\\` doubled away; SQLite's LIKE already is
  (for ASCII letters: SQLite folds no other case).
- Dates are stored as UTC wall time: values are bound as UTC.
- A ref's lastOpDate is the later of the ref's and its snapshot's (as the inventory).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    case,
    cast,
    func,
    not_,
    select,
    true,
)
from sqlmodel import Session

from snapgroup.domain.zquery import COMPARISONS, GROUP_FIELDS, Condition, Kind, Query
from snapgroup.store.base import _GROUPS, _REFS, _SNAPSHOTS
from snapgroup.store.groups import group_view_columns

_G, _R, _S = _GROUPS.c, _REFS.c, _SNAPSHOTS.c

# Ref fields kept on the snapshot row: a condition on them joins it.
_SQL_COMPARE = dict(
    zip(
        COMPARISONS,
        (operator.eq, operator.ne, operator.gt, operator.lt, operator.ge, operator.le),
        strict=True,
    )
)
_ON_SNAPSHOT = frozenset(
    {"snapshotDeleted", "volumeSnapshotInstallPath", "volumeSnapshotName", "lastOpDate"}
)


def _snapshot_count() -> ColumnElement[Any]:
    counted = select(func.count()).where(_R.group_uuid == _G.uuid).correlate(_GROUPS)
    return counted.scalar_subquery()


def _group_column(field: str) -> ColumnElement[Any]:
    if field == "snapshotCount":
        return _snapshot_count()
    name = {"vmInstanceUuid": "vm_uuid", "createDate": "create_date", "lastOpDate": "last_op_date"}
    column: ColumnElement[Any] = _G[name.get(field, field)]
    return column


def _ref_column(field: str) -> ColumnElement[Any]:
    if field == "lastOpDate":
        later = case((_R.last_op_date >= _S.last_op_date, _R.last_op_date), else_=_S.last_op_date)
        return later
    columns: dict[str, ColumnElement[Any]] = {
        "volumeSnapshotUuid": _R.volume_snapshot_uuid,
        "volumeSnapshotGroupUuid": _R.group_uuid,
        "deviceId": _R.device_id,
        "snapshotDeleted": _S.deleted,
        "volumeUuid": _R.volume_uuid,
        "volumeName": _R.volume_name,
        "volumeType": _R.volume_type,
        "volumeSnapshotInstallPath": _S.install_path,
        "volumeSnapshotName": _S.name,
        "createDate": _R.create_date,
    }
    return columns[field]


def _value(kind: Kind, value: Any) -> Any:
    if kind is Kind.DATE and isinstance(value, datetime):
        return value.astimezone(UTC)  # the column type stores UTC wall time
    return value


class _Compiler:
    def __init__(self, dialect: str) -> None:
        self.postgres = dialect == "postgresql"

    def ordered(self, column: ColumnElement[Any], kind: Kind) -> ColumnElement[Any]:
        """The column as it orders in Python (text by code point)."""
        if self.postgres and kind is Kind.TEXT:
            return column.collate("C")
        return column

    def test(self, column: ColumnElement[Any], c: Condition) -> ColumnElement[bool]:
        op = c.op
        if op == "is null":
            return column.is_(None)
        if op == "not null":
            return column.is_not(None)
        if op in ("?=", "!?="):
            values = [_value(c.kind, v) for v in c.value]
            inside = column.in_(values)
            # NOT IN on NULL is NULL, not true: as the reference, no value never matches.
            return inside if op == "?=" else not_(inside)
        if op in ("~=", "!~="):
            text = column if c.kind is Kind.TEXT else cast(column, String)
            if self.postgres:
                matched = text.ilike(c.value.replace("\\", "\\\\"))
            else:
                matched = text.like(c.value)  # SQLite's LIKE ignores ASCII case
            return matched if op == "~=" else not_(matched)
        value = _value(c.kind, c.value)
        # Equality keeps the column as it is (its index); order comparisons collate.
        operand = column if op in ("=", "!=") else self.ordered(column, c.kind)
        compared: ColumnElement[bool] = _SQL_COMPARE[op](operand, value)
        return compared

    def condition(self, c: Condition) -> ColumnElement[bool]:
        ref_field = c.ref_field
        if ref_field is None:
            return self.test(_group_column(c.field), c)
        inner = select(_R.group_uuid)
        if ref_field in _ON_SNAPSHOT:
            inner = inner.join_from(_REFS, _SNAPSHOTS, _S.uuid == _R.volume_snapshot_uuid)
        return _G.uuid.in_(inner.where(self.test(_ref_column(ref_field), c)))

    def where(self, query: Query) -> ColumnElement[bool]:
        if not query.conditions:
            return true()
        return and_(*(self.condition(c) for c in query.conditions))

    def order(self, query: Query) -> list[ColumnElement[Any]]:
        """The sort field (nulls last either way), then the store's order: oldest first,
        as the reference's stable sort leaves ties."""
        base: list[ColumnElement[Any]] = [_G.create_date, _G.uuid]
        if query.sort_by is None:
            return base
        column = _group_column(query.sort_by)
        ordered = self.ordered(column, GROUP_FIELDS[query.sort_by])
        nulls = [case((column.is_(None), 1), else_=0)] if query.sort_by == "description" else []
        return [*nulls, ordered.desc() if query.descending else ordered.asc(), *base]


def page_statement(query: Query, dialect: str) -> Select[Any]:
    """The uuids of the page's groups, in order: one statement."""
    compiler = _Compiler(dialect)
    statement = select(_G.uuid).where(compiler.where(query)).order_by(*compiler.order(query))
    return statement.limit(query.limit).offset(query.start or None)


def count_statement(query: Query, dialect: str) -> Select[Any]:
    return select(func.count()).select_from(_GROUPS).where(_Compiler(dialect).where(query))


def page_uuids(session: Session, query: Query) -> list[str]:
    """The uuids of the groups on the query's page (none with count=true or limit 0)."""
    if query.count or query.limit == 0:
        return []
    dialect = session.get_bind().dialect.name
    return list(session.execute(page_statement(query, dialect)).scalars())


def page_views(session: Session, query: Query) -> list[Sequence[Any]]:
    """The page's groups as Repo.group_views rows (GROUP_VIEW_COLUMNS), in order: the
    page statement selecting them, not a second read by UUID."""
    if query.count or query.limit == 0:
        return []
    dialect = session.get_bind().dialect.name
    statement = page_statement(query, dialect).with_only_columns(*group_view_columns())
    return list(session.execute(statement).all())


def total(session: Session, query: Query) -> int | None:
    """How many groups match, when the query asks for it (count / replyWithCount)."""
    if not (query.count or query.reply_with_count):
        return None
    dialect = session.get_bind().dialect.name
    return int(session.execute(count_statement(query, dialect)).scalar_one())
