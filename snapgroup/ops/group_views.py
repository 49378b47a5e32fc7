"""Groups read from the store into the seed's JSON shapes (inventory.Group): two
queries for any number of groups."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from snapgroup.domain.inventory import Group, GroupRef
from snapgroup.store.base import DateParser
from snapgroup.store.repo import Repo


def load_groups(repo: Repo, uuids: Sequence[str]) -> list[Group]:
    """The groups of those UUIDs that exist, in that order: two queries for any number."""
    wanted = list(dict.fromkeys(uuids))
    if not wanted:
        return []
    found = {g.uuid: g for g in _groups(repo, uuids=wanted)}
    return [found[u] for u in wanted if u in found]


def groups_of_views(repo: Repo, views: Sequence[Sequence[Any]]) -> list[Group]:
    """Groups of rows Repo.group_views returned (or a page of them), in that order,
    with their refs: one more query."""
    if not views:
        return []
    date = repo.date_parser()
    refs: dict[str, list[GroupRef]] = {}
    for r in repo.ref_views(uuids=[g[0] for g in views]):
        refs.setdefault(r[1], []).append(_ref(r, date))
    return [_group(g, refs.get(g[0], ()), date) for g in views]


def load_vm_groups(repo: Repo, vm_uuid: str | None) -> list[Group]:
    """Every group of the VM (of every VM: None), oldest first: two queries."""
    return _groups(repo, vm_uuid=vm_uuid)


def _groups(
    repo: Repo, *, uuids: Sequence[str] | None = None, vm_uuid: str | None = None
) -> list[Group]:
    date = repo.date_parser()  # each distinct date converted once
    refs: dict[str, list[GroupRef]] = {}
    for r in repo.ref_views(uuids=uuids, vm_uuid=vm_uuid):
        refs.setdefault(r[1], []).append(_ref(r, date))
    return [
        _group(g, refs.get(g[0], ()), date) for g in repo.group_views(uuids=uuids, vm_uuid=vm_uuid)
    ]


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
        snapshot_changed,
        changed_reason,
    ) = row  # Repo.ref_views
    # Positional, in GroupRef's field order: keywords cost ~2 us more per ref (1,600).
    return GroupRef(
        snapshot,
        group,
        device_id,
        deleted,
        volume,
        volume_name,
        volume_type,
        path,
        snapshot_name,
        date(attached),
        date(created),
        max(date(changed), date(snapshot_changed)),
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
    )
