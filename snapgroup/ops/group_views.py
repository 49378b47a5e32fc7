"""Groups read from the store into the seed's JSON shapes (inventory.Group): two
queries for any number of groups."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from snapgroup.domain import documents
from snapgroup.domain.errors import OperationError
from snapgroup.domain.inventory import (
    Group,
    GroupRef,
    MemoryState,
    zstack_date,
)
from snapgroup.store.base import DateParser
from snapgroup.store.repo import Repo
from snapgroup.store.tables import SnapshotRow


def check_intact(group_uuid: str, volume_uuid: str, snap: SnapshotRow, *, to_be: str) -> None:
    """A group is read (exported, browsed) only as it was taken: none of its snapshots
    deleted or changed. `to_be`: what was asked ("read", "exported"), for the error."""
    if snap.deleted or snap.changed:
        why = "deleted" if snap.deleted else f"changed ({snap.changed})"
        raise OperationError(
            f"group {group_uuid} cannot be {to_be}: its snapshot of volume {volume_uuid} is {why}"
        )


def load_groups(repo: Repo, uuids: Sequence[str]) -> list[Group]:
    """The groups of those UUIDs that exist, in that order: two queries for any number."""
    wanted = list(dict.fromkeys(uuids))
    if not wanted:
        return []
    found = {g.uuid: g for g in _groups(repo, uuids=wanted)}
    return [found[u] for u in wanted if u in found]


def groups_of_rows(
    views: Sequence[Sequence[Any]], ref_rows: Sequence[Sequence[Any]], date: DateParser
) -> list[Group]:
    """Groups of those rows, in the views' order, with their refs."""
    refs: dict[str, list[GroupRef]] = {}
    for r in ref_rows:
        refs.setdefault(r[1], []).append(_ref(r, date))
    return [_group(g, refs.get(g[0], ()), date) for g in views]


def documents_of_rows(
    views: Sequence[Sequence[Any]],
    ref_rows: Sequence[Sequence[Any]],
    dates: Callable[[], DateParser],
) -> list[dict[str, Any]]:
    """The inventories of groups_of_rows(...) (a test holds them equal), made straight
    from the rows: no GroupRef and Group first (a frozen dataclass of 13 fields per ref
    cost more than the page's SQL), each distinct raw date made text once."""
    return documents.documents_of_rows(views, ref_rows, _date_texts(dates), _TEXTS.get)


# Raw date value -> its inventory text, kept across replies: a pure function of the
# value and the host's zone, so dropped when the zone changes (TZ, or what tzset() made
# of it) and when it outgrows _TEXTS_MAX. A page's dates are mostly seen before.
_TEXTS: dict[Any, str] = {}
_TEXTS_ZONE: list[object] = [None]
_TEXTS_MAX = 1 << 16


def _date_texts(dates: Callable[[], DateParser]) -> Callable[[Any], str]:
    """raw -> text through _TEXTS; the parser is made on the first unknown date only."""
    zone = (os.environ.get("TZ"), time.tzname, time.timezone, time.altzone, time.daylight)
    if _TEXTS_ZONE[0] != zone or len(_TEXTS) > _TEXTS_MAX:
        _TEXTS.clear()
        _TEXTS_ZONE[0] = zone
    parser: list[DateParser] = []

    def text(raw: Any) -> str:
        made = _TEXTS.get(raw)
        if made is None:
            if not parser:
                parser.append(dates())
            made = _TEXTS[raw] = zstack_date(parser[0](raw))
        return made

    return text


def load_vm_groups(repo: Repo, vm_uuid: str | None) -> list[Group]:
    """Every group of the VM (of every VM: None), oldest first: two queries."""
    return _groups(repo, vm_uuid=vm_uuid)


def _groups(
    repo: Repo, *, uuids: Sequence[str] | None = None, vm_uuid: str | None = None
) -> list[Group]:
    ref_rows = repo.ref_views(uuids=uuids, vm_uuid=vm_uuid)  # refs first, as before
    views = repo.group_views(uuids=uuids, vm_uuid=vm_uuid)
    return groups_of_rows(views, ref_rows, repo.date_parser())


def _ref(row: Sequence[Any], date: DateParser) -> GroupRef:
    (
        snapshot,
        group,
        device_id,
        volume,
        volume_name,
        volume_type,
        attached,
        created,
        changed,
        deleted,
        path,
        snapshot_name,
        changed_reason,
    ) = row  # Repo.ref_views
    # Positional, in GroupRef's field order: keywords cost ~2 us more per ref (1,600).
    return GroupRef(
        snapshot,
        group,
        device_id,
        bool(deleted),
        volume,
        volume_name,
        volume_type,
        path,
        snapshot_name,
        date(attached),
        date(created),
        date(changed),
        changed_reason,
    )


def _group(row: Sequence[Any], refs: Sequence[GroupRef], date: DateParser) -> Group:
    (
        uuid,
        name,
        description,
        vm_uuid,
        created,
        changed,
        consistency,
        frozen,
        millis,
        note,
        policy,
        label,
        protected,
        memory_file,
        memory_size,
        memory_sha256,
        memory_mode,
    ) = row  # Repo.group_views
    return Group(
        uuid=uuid,
        name=name,
        description=description,
        vm_uuid=vm_uuid,
        create_date=date(created),
        last_op_date=date(changed),
        refs=tuple(refs),
        consistency_type=consistency,
        frozen_filesystems=tuple(json.loads(frozen or "[]")),
        freeze_millis=millis,
        consistency_note=note,
        policy=tuple(sorted(policy.split(","))) if policy else None,  # policy_repo's marks
        policy_label=label,
        protected=bool(protected),
        memory=MemoryState.of(memory_file, memory_size, memory_sha256, memory_mode),
    )
