"""ZStack's query language evaluated in Python over Group objects: the reference the
store's SQL (store/group_query.py) is tested against, condition by condition. The
language itself is parsed in snapgroup.domain.zquery; the API serves group queries
from SQL, and the small resources' (VMs, volumes: run_plain) in Python.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from snapgroup.domain.inventory import Group, GroupRef
from snapgroup.domain.zquery import COMPARISONS, Condition, Query, like_regex, parse_condition
from snapgroup.domain.zquery import parse_query as _parse

__all__ = ["ReferenceQuery", "holds", "parse_condition", "parse_query", "run_plain"]


def _utc(moment: datetime) -> datetime:
    """Stored times are UTC; naive ones (read back from the store) are UTC wall time."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


GROUP_GETTERS: dict[str, Callable[[Group], Any]] = {
    "uuid": lambda g: g.uuid,
    "name": lambda g: g.name,
    "description": lambda g: g.description,
    "vmInstanceUuid": lambda g: g.vm_uuid,
    "snapshotCount": lambda g: g.snapshot_count,
    "createDate": lambda g: _utc(g.create_date),
    "lastOpDate": lambda g: _utc(g.last_op_date),
}
REF_GETTERS: dict[str, Callable[[GroupRef], Any]] = {
    "volumeSnapshotUuid": lambda r: r.volume_snapshot_uuid,
    "volumeSnapshotGroupUuid": lambda r: r.group_uuid,
    "deviceId": lambda r: r.device_id,
    "snapshotDeleted": lambda r: r.snapshot_deleted,
    "volumeUuid": lambda r: r.volume_uuid,
    "volumeName": lambda r: r.volume_name,
    "volumeType": lambda r: r.volume_type,
    "volumeSnapshotInstallPath": lambda r: r.install_path,
    "volumeSnapshotName": lambda r: r.snapshot_name,
    "createDate": lambda r: _utc(r.create_date),
    "lastOpDate": lambda r: _utc(r.last_op_date),
}
_OPERATORS = (operator.eq, operator.ne, operator.gt, operator.lt, operator.ge, operator.le)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = dict(zip(COMPARISONS, _OPERATORS, strict=True))


def _test(condition: Condition, actual: Any) -> bool:
    op, value = condition.op, condition.value
    if op == "is null":
        return actual is None
    if op == "not null":
        return actual is not None
    if actual is None:
        return False
    if op in ("?=", "!?="):
        return (actual in value) == (op == "?=")
    if op in ("~=", "!~="):
        return bool(like_regex(value).match(str(actual))) == (op == "~=")
    return _COMPARE[op](actual, value)


def holds(condition: Condition, group: Group) -> bool:
    ref_field = condition.ref_field
    if ref_field is not None:
        get = REF_GETTERS[ref_field]
        return any(_test(condition, get(r)) for r in group.refs)
    return _test(condition, GROUP_GETTERS[condition.field](group))


@dataclass(frozen=True)
class ReferenceQuery:
    query: Query

    def run(self, groups: Sequence[Group]) -> dict[str, Any]:
        """The reply document over `groups` (in the store's order: oldest first)."""
        q = self.query
        matched = [g for g in groups if all(holds(c, g) for c in q.conditions)]
        if q.sort_by is not None:
            get = GROUP_GETTERS[q.sort_by]
            present = sorted(
                (g for g in matched if get(g) is not None), key=get, reverse=q.descending
            )
            matched = present + [g for g in matched if get(g) is None]  # nulls last
        page = [] if q.count else matched[q.start : q.start + q.limit]
        return q.reply([g.to_inventory() for g in page], len(matched))


def run_plain(
    query: Query, items: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]
) -> dict[str, Any]:
    """A query over a small resource in Python: each item is (its values by field, dates
    as datetimes; its inventory). Sorted as the groups are: nulls last, stable."""
    matched = [i for i in items if all(_test(c, i[0].get(c.field)) for c in query.conditions)]
    if query.sort_by is not None:
        key = query.sort_by
        present = sorted(
            (i for i in matched if i[0].get(key) is not None),
            key=lambda i: i[0][key],
            reverse=query.descending,
        )
        matched = present + [i for i in matched if i[0].get(key) is None]
    page = [] if query.count else matched[query.start : query.start + query.limit]
    return query.reply([i[1] for i in page], len(matched))


def parse_query(**params: Any) -> ReferenceQuery:
    return ReferenceQuery(_parse(**params))
