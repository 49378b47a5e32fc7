"""What every query class of the store shares: its session, the tables, dates read raw.
Never commits: the caller's transaction does."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Dialect,
    Select,
    Table,
    type_coerce,
)
from sqlalchemy.sql.sqltypes import NullType
from sqlmodel import Session, SQLModel

from snapgroup.store.tables import GroupRow, OperationRow, RefRow, SnapshotRow, VolumeRow

_GROUPS: Table = GroupRow.__table__  # type: ignore[attr-defined]
_VOLUMES: Table = VolumeRow.__table__  # type: ignore[attr-defined]
_REFS: Table = RefRow.__table__  # type: ignore[attr-defined]
_SNAPSHOTS: Table = SnapshotRow.__table__  # type: ignore[attr-defined]
_OPERATIONS: Table = OperationRow.__table__  # type: ignore[attr-defined]


_DATES = frozenset({"create_date", "last_op_date"})


def _raw(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A date column as the driver returns it (SQLite: text), for a DateParser."""
    return type_coerce(column, NullType())


class DateParser:
    """Converts raw date values (_raw) as their column type would, once per distinct
    value: a VM's 1,600 refs hold ~100 distinct dates, and converting all 6,400 (a
    regex parse each on SQLite) cost more than the query. Every date column of the
    schema has the same type. One per query result: nothing is kept across calls."""

    def __init__(self, dialect: Dialect) -> None:
        kind = _GROUPS.c.create_date.type
        self._convert = kind.dialect_impl(dialect).result_processor(dialect, None)
        self._seen: dict[Any, datetime] = {}

    def __call__(self, raw: Any) -> datetime:
        try:
            return self._seen[raw]
        except KeyError:
            value = raw if self._convert is None else self._convert(raw)
            assert isinstance(value, datetime)  # the date columns read are NOT NULL
            self._seen[raw] = value
            return value


class RepoBase:
    """The session every query class of the store works in."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, *rows: VolumeRow | SnapshotRow | GroupRow | RefRow) -> None:
        self.session.add_all(rows)
        self.session.flush()

    def _hold(self, rows: Iterable[SQLModel | None]) -> None:
        """Keeps rows loaded alongside others for the session's life: its identity map
        holds them weakly, so a later session.get would otherwise query again."""
        self.session.info.setdefault("held", []).extend(r for r in rows if r is not None)

    def _expire(self, table: type[SQLModel], keys: Iterable[str]) -> None:
        """Rows of this session written around the ORM are read again on next use."""
        for key in keys:
            row = self.session.identity_map.get(self.session.identity_key(table, key))
            if row is not None:
                self.session.expire(row)

    def _rows(self, query: Select[Any]) -> list[Sequence[Any]]:
        """A column-only query's rows. Flushes first, as an ORM query would (autoflush):
        the caller's transaction may have pending changes to these tables."""
        self.session.flush()
        return list(self.session.connection().execute(query).all())

    def date_parser(self) -> DateParser:
        return DateParser(self.session.get_bind().dialect)
