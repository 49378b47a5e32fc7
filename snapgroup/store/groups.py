"""Groups and their refs, also read as plain rows for the group views."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    bindparam,
    case,
    delete,
    insert,
    or_,
    true,
)
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Connection
from sqlmodel import col, select

from snapgroup.store.base import (
    _DATES,
    _GROUPS,
    _REFS,
    _SNAPSHOTS,
    RepoBase,
    _raw,
)
from snapgroup.store.driver_sql import fetch
from snapgroup.store.tables import GroupRow, RefRow, SnapshotRow, VolumeRow

# Repo.group_views' columns, in order (the dates raw: see DateParser).
GROUP_VIEW_COLUMNS = (
    "uuid",
    "name",
    "description",
    "vm_uuid",
    "create_date",
    "last_op_date",
    "consistency_type",
    "frozen_filesystems",
    "freeze_millis",
    "consistency_note",
    "policy",
    "policy_label",
    "protected",
    "memory_file",
    "memory_size",
    "memory_sha256",
    "memory_mode",
)


def group_view_columns() -> list[ColumnElement[Any]]:
    """GROUP_VIEW_COLUMNS as columns to select (the dates raw)."""
    g = _GROUPS.c
    return [_raw(g[n]) if n in _DATES else g[n] for n in GROUP_VIEW_COLUMNS]


_R, _S = _REFS.c, _SNAPSHOTS.c
# Repo.ref_views' columns, in order: what a ref's inventory shows (the dates raw).
REF_VIEW_COLUMNS: tuple[ColumnElement[Any], ...] = (
    _R.volume_snapshot_uuid,
    _R.group_uuid,
    _R.device_id,
    _R.volume_uuid,
    _R.volume_name,
    _R.volume_type,
    _raw(_R.volume_last_attach_date),
    _raw(_R.create_date),
    # The ref's lastOpDate as the inventory shows it: its own or its snapshot's, the later.
    _raw(case((_R.last_op_date >= _S.last_op_date, _R.last_op_date), else_=_S.last_op_date)),
    _S.deleted,
    _S.install_path,
    _S.name,
    _S.changed,
)
_REF_VIEW = sa_select(*REF_VIEW_COLUMNS).join_from(
    _REFS, _SNAPSHOTS, _S.uuid == _R.volume_snapshot_uuid
)


def _group_filter(uuids: Sequence[str] | None, vm_uuid: str | None) -> ColumnElement[bool]:
    g = _GROUPS.c
    if uuids is not None:
        return g.uuid.in_(list(uuids))
    return true() if vm_uuid is None else g.vm_uuid == vm_uuid


class GroupQueries(RepoBase):
    def insert_group(self, values: dict[str, Any]) -> None:
        """A new group's row, every column given: one INSERT, no ORM object."""
        self.session.execute(insert(_GROUPS), [values])

    def group(self, uuid: str) -> GroupRow | None:
        return self.session.get(GroupRow, uuid)

    def has_group(self, uuid: str) -> bool:
        query = sa_select(_GROUPS.c.uuid).where(_GROUPS.c.uuid == uuid)
        return self.session.execute(query).first() is not None

    def groups(self, *, vm_uuid: str | None = None, host: str | None = None) -> list[GroupRow]:
        query = select(GroupRow)
        if vm_uuid is not None:
            query = query.where(GroupRow.vm_uuid == vm_uuid)
        if host is not None:  # that host's groups, and those of no recorded host
            query = query.where(or_(col(GroupRow.host) == host, col(GroupRow.host).is_(None)))
        return list(
            self.session.exec(query.order_by(col(GroupRow.create_date), col(GroupRow.uuid)))
        )

    def refs_with_snapshots(self, group_uuids: Sequence[str]) -> list[tuple[RefRow, SnapshotRow]]:
        """Every ref of the given groups with its snapshot, in one query, by deviceId.
        The snapshots' volumes are loaded into the session by the same query: the callers
        look each one up (repo.volume), which then costs no query per ref."""
        if not group_uuids:
            return []
        query = (
            select(RefRow, SnapshotRow, VolumeRow)
            .join(SnapshotRow, col(SnapshotRow.uuid) == col(RefRow.volume_snapshot_uuid))
            .outerjoin(VolumeRow, col(VolumeRow.uuid) == col(SnapshotRow.volume_uuid))
            .where(col(RefRow.group_uuid).in_(list(group_uuids)))
            .order_by(col(RefRow.group_uuid), col(RefRow.device_id))
        )
        rows = list(self.session.exec(query))
        self._hold(volume for _ref, _snap, volume in rows)
        return [(ref, snap) for ref, snap, _volume in rows]

    def group_views(
        self, *, uuids: Sequence[str] | None = None, vm_uuid: str | None = None
    ) -> list[Sequence[Any]]:
        """Groups as plain rows (no ORM object each): those of `uuids` that exist, else
        the VM's (every group when `vm_uuid` is None too), oldest first. Columns as in
        GROUP_VIEW_COLUMNS, the dates converted by a DateParser."""
        g = _GROUPS.c
        query = sa_select(*group_view_columns()).where(_group_filter(uuids, vm_uuid))
        return self._rows(query.order_by(g.create_date, g.uuid))

    def ref_views(
        self, *, uuids: Sequence[str] | None = None, vm_uuid: str | None = None
    ) -> list[Sequence[Any]]:
        """What a group's inventory shows of each ref and its snapshot, for the groups
        group_views selects with the same arguments, as plain rows (_REF_VIEW's columns)
        (an ORM object per ref and snapshot cost ~100x the query for a VM's 1,600
        refs). By group, then deviceId."""
        if uuids is not None:
            self.session.flush()  # as _rows
            return ref_views_of(self.session.connection(), uuids)
        query = _REF_VIEW
        if vm_uuid is not None:  # through the groups' vm_uuid index: no list of UUIDs
            g = _GROUPS.c
            query = query.join_from(_REFS, _GROUPS, g.uuid == _R.group_uuid)
            query = query.where(g.vm_uuid == vm_uuid)
        return self._rows(query.order_by(_R.group_uuid, _R.device_id))

    def memory_files(self) -> set[str]:
        """The memory file of every memory group in the store (any VM, any host)."""
        query = sa_select(_GROUPS.c.memory_file).where(_GROUPS.c.memory_file.is_not(None))
        return {str(path) for (path,) in self.session.execute(query)}

    def delete_group(self, uuid: str) -> None:
        self.session.execute(delete(RefRow).where(col(RefRow.group_uuid) == uuid))
        self.session.execute(delete(GroupRow).where(col(GroupRow.uuid) == uuid))

    # trees, single snapshots and clones

    def ref(self, snapshot_uuid: str) -> RefRow | None:
        """The group ref of a snapshot, if it belongs to a group."""
        return self.session.get(RefRow, snapshot_uuid)


def ref_views_of(conn: Connection, uuids: Sequence[str]) -> list[Sequence[Any]]:
    """Repo.ref_views of those groups on a Core connection, by the driver (a page's
    refs are read on every query)."""
    return fetch(conn, _ref_views_of_n(len(uuids)), {f"u{i}": u for i, u in enumerate(uuids)})


@functools.lru_cache(maxsize=64)
def _ref_views_of_n(n: int) -> Select[Any]:
    """_REF_VIEW of exactly n groups, by group then deviceId: an IN list of n plain
    parameters, which the driver takes as they are (an expanding one is rendered on
    every execution)."""
    listed = _R.group_uuid.in_([bindparam(f"u{i}") for i in range(n)])
    return _REF_VIEW.where(listed).order_by(_R.group_uuid, _R.device_id)
