"""The embedded store (SQLite) read without SQLAlchemy: what `snapgroup list` and `show`
need, for the start-up fast path (cli/quick.py). Importing SQLAlchemy and SQLModel
costs ~0.3 s on our lab hosts, about 20 times `virsh list`; the standard library's
sqlite3 ~3 ms.

Read-only, and only on a store this code's schema made (its stamp: SCHEMA_FINGERPRINT,
which a test holds equal to store/db.py's schema_fingerprint()): anything else, and any
error, answers None and the command runs on the whole engine, which migrates, creates
or explains. The columns are the store's group_views and ref_views, in their order
(store/groups.py); tests compare every answer with the engine's."""

from __future__ import annotations

import sqlite3

TYPE_CHECKING = False  # not typing's: importing typing costs ~14 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

SCHEMA_FINGERPRINT = "d33b77675e2bd1436525dcabfab7b255f5563605973f13c87365d89aa4d30279"

_GROUP_VIEW = (
    "SELECT uuid, name, description, vm_uuid, create_date, last_op_date, consistency_type,"
    " frozen_filesystems, freeze_millis, consistency_note, policy, policy_label, protected,"
    " memory_file, memory_size, memory_sha256, memory_mode FROM volume_snapshot_group"
)
_REF_VIEW = (
    "SELECT r.volume_snapshot_uuid, r.group_uuid, r.device_id, r.volume_uuid, r.volume_name,"
    " r.volume_type, r.volume_last_attach_date, r.create_date,"
    " CASE WHEN r.last_op_date >= s.last_op_date THEN r.last_op_date ELSE s.last_op_date END,"
    " s.deleted, s.install_path, s.name, s.changed"
    " FROM volume_snapshot_group_ref AS r JOIN volume_snapshot AS s"
    " ON s.uuid = r.volume_snapshot_uuid"
)
_SQLITE_URL = "sqlite:///"
DEFAULT_URL = "sqlite:////var/lib/snapgroup/snapgroup.db"  # store/db.py's default too


def database_path(url: str) -> str | None:
    """The file of a plain `sqlite:///PATH` URL (as SQLAlchemy reads it); None for any
    other URL, and for one whose path SQLAlchemy would decode (%, ?)."""
    if not url.startswith(_SQLITE_URL):
        return None
    path = url[len(_SQLITE_URL) :]
    if not path or path == ":memory:" or "%" in path or "?" in path or "#" in path:
        return None
    return path


class Unreadable(Exception):
    """The store could not be read as this code expects: the engine's to explain."""


class QuickStore:
    """One read transaction on the store: every answer read at one moment."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _rows(self, query: str, values: Sequence[object]) -> list[Any]:
        try:
            return self._conn.execute(query, tuple(values)).fetchall()
        except sqlite3.Error as error:  # a schema we do not know after all, a lock
            raise Unreadable(str(error)) from error

    def __enter__(self) -> QuickStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()  # the read transaction ends with it: nothing was written

    def unfinished(self) -> bool:
        """Whether the journal holds an operation still running (or interrupted): the
        engine's to recover before anything is read (every command starts there)."""
        return bool(self._rows("SELECT 1 FROM operation WHERE state = 'running' LIMIT 1", ()))

    def page(self, limit: int, start: int) -> tuple[list[Sequence[Any]], int]:
        """`list`'s page (oldest first, as the engine's query_groups) and the total."""
        rows = self._rows(
            f"{_GROUP_VIEW} ORDER BY create_date, uuid LIMIT ? OFFSET ?", (limit, start)
        )
        ((total,),) = self._rows("SELECT count(*) FROM volume_snapshot_group", ())
        return rows, int(total)

    def groups(self, uuids: Sequence[str]) -> list[Sequence[Any]]:
        marks = ",".join("?" * len(uuids))
        return self._rows(f"{_GROUP_VIEW} WHERE uuid IN ({marks})", uuids)

    def refs(self, uuids: Sequence[str]) -> list[Sequence[Any]]:
        """The groups' refs, by group then deviceId."""
        if not uuids:
            return []
        marks = ",".join("?" * len(uuids))
        query = f"{_REF_VIEW} WHERE r.group_uuid IN ({marks}) ORDER BY r.group_uuid, r.device_id"
        return self._rows(query, uuids)

    def ref_counts(self, uuids: Sequence[str]) -> dict[str, int]:
        if not uuids:
            return {}
        marks = ",".join("?" * len(uuids))
        query = (
            "SELECT group_uuid, count(*) FROM volume_snapshot_group_ref"
            f" WHERE group_uuid IN ({marks}) GROUP BY group_uuid"
        )
        return dict(self._rows(query, uuids))


def open_current(path: str) -> QuickStore | None:
    """The store at path, read-only in one read transaction, when it exists and carries
    this code's schema stamp; else None. sqlite3.Error escapes only after the check."""
    uri = "file:" + path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:  # missing, unreadable: the engine says what is wrong
        return None
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("BEGIN")  # deferred: the first SELECT fixes the moment read
        stamp = conn.execute("SELECT fingerprint FROM schema_stamp").fetchone()
    except sqlite3.Error:
        conn.close()
        return None
    if stamp is None or stamp[0] != SCHEMA_FINGERPRINT:
        conn.close()
        return None
    return QuickStore(conn)
