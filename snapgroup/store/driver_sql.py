"""Hot reads run on the driver's own cursor, their SQL compiled once.

SQLAlchemy's execution of a cached statement costs ~40 us here (its parameters, an
execution context, a result object), more than SQLite takes to answer a one-group page:
for the query path's reads (a page, its refs, a count) that was most of the time. `fetch`
compiles a statement once per dialect and, when every parameter is plain (text, numbers,
None: nothing a type would convert), hands SQL and values to the DB-API cursor. Anything
else (a date, an expanding list) goes through SQLAlchemy as before.

Rows come back as the driver gives them: dates raw (as every view reads them, see
store.base.DateParser) and SQLite's booleans as 0/1, which the views make bool.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Dialect, Select
from sqlalchemy.engine import Compiled, Connection

from snapgroup.domain.errors import StoreError

_PLAIN = frozenset({str, int, float, bool, type(None)})


@functools.lru_cache(maxsize=1024)
def _compiled(
    statement: Select[Any], dialect: Dialect
) -> tuple[Compiled, tuple[str, ...] | None, bool]:
    """The statement compiled for the dialect, its positional parameters' names (None:
    the driver takes them by name), and whether it holds an IN list rendered at each
    execution (then SQLAlchemy runs it). The statements are module-level or cached
    templates: the same object each time, a key by identity."""
    compiled = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ()) if compiled.positional else None
    return compiled, names, "POSTCOMPILE" in compiled.string


def fetch(conn: Connection, statement: Select[Any], values: Mapping[str, Any]) -> list[Any]:
    """The statement's rows (tuples), its `values` bound."""
    compiled, names, expanding = _compiled(statement, conn.dialect)
    if expanding:
        return list(conn.execute(statement, values).all())
    params = compiled.construct_params(dict(values))
    assert params is not None
    if not all(type(v) in _PLAIN for v in params.values()):
        return list(conn.execute(statement, values).all())
    args: Sequence[Any] | Mapping[str, Any] = (
        [params[n] for n in names] if names is not None else params
    )
    driver = conn.connection.dbapi_connection
    assert driver is not None
    try:
        cursor = driver.cursor()
        try:
            # The engine's cursor events still see the statement (logging, tests).
            events = conn.dispatch
            if events.before_cursor_execute:
                events.before_cursor_execute(conn, cursor, compiled.string, args, None, False)
            cursor.execute(compiled.string, args)
            if events.after_cursor_execute:
                events.after_cursor_execute(conn, cursor, compiled.string, args, None, False)
            return list(cursor.fetchall())
        finally:
            cursor.close()
    except conn.dialect.loaded_dbapi.Error as exc:
        raise StoreError(f"metadata store error: {exc}") from exc
