"""Snapshot policies and group marks in the store. Never commits: the caller's
transaction does (one policy change or one group's marks = one transaction)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Table, delete, insert, select, update
from sqlmodel import Session

from snapgroup.domain.errors import InvalidArgument, NotFound
from snapgroup.domain.retention import Policy, Retention, validate_policy
from snapgroup.store.policy_tables import PolicyRow, SchedulerTriggerRow
from snapgroup.store.tables import GroupRow

_POLICIES: Table = PolicyRow.__table__  # type: ignore[attr-defined]
_GROUPS: Table = GroupRow.__table__  # type: ignore[attr-defined]
_TRIGGERS: Table = SchedulerTriggerRow.__table__  # type: ignore[attr-defined]
_MARK_SEPARATOR = ","  # policy names cannot hold one (retention.validate_policy)


@dataclass(frozen=True)
class PolicyRecord:
    policy: Policy
    uuid: str
    export_to: str | None
    export_keep: int | None
    create_date: datetime
    last_op_date: datetime
    export_compress: bool = False


@dataclass(frozen=True)
class GroupMarks:
    """A group as a policy pass sees it (the store's times are UTC)."""

    uuid: str
    name: str
    vm_uuid: str
    create_date: datetime
    policies: frozenset[str]  # empty: made by hand
    label: str | None
    protected: bool


def _policy(row: PolicyRow) -> Policy:
    return Policy(
        name=row.name,
        retention=Retention(
            frequent=row.frequent,
            hourly=row.hourly,
            daily=row.daily,
            weekly=row.weekly,
            monthly=row.monthly,
            every=row.every,
        ),
        vms=None if row.vms is None else tuple(json.loads(row.vms)),
        exclude=tuple(json.loads(row.exclude)),
        consistency=row.consistency,
        min_free_percent=row.min_free_percent,
        with_memory=bool(row.with_memory),
    )


def _record(row: PolicyRow) -> PolicyRecord:
    return PolicyRecord(
        _policy(row),
        row.uuid,
        row.export_to,
        row.export_keep,
        row.create_date,
        row.last_op_date,
        export_compress=bool(row.export_compress),
    )


def _columns(policy: Policy) -> dict[str, object]:
    r = policy.retention
    return {
        "vms": None if policy.vms is None else json.dumps(list(policy.vms)),
        "exclude": json.dumps(list(policy.exclude)),
        "frequent": r.frequent,
        "hourly": r.hourly,
        "daily": r.daily,
        "weekly": r.weekly,
        "monthly": r.monthly,
        "every": r.every,
        "consistency": policy.consistency,
        "min_free_percent": policy.min_free_percent,
        "with_memory": policy.with_memory,
    }


def encode_marks(policies: Iterable[str]) -> str:
    return _MARK_SEPARATOR.join(sorted(set(policies)))


def decode_marks(value: str | None) -> frozenset[str]:
    return frozenset(value.split(_MARK_SEPARATOR)) if value else frozenset()


class PolicyRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def put(
        self,
        policy: Policy,
        *,
        now: datetime,
        new_uuid: Callable[[], str],
        export_to: str | None = None,
        export_keep: int | None = None,
        export_compress: bool = False,
    ) -> tuple[PolicyRecord, bool]:
        """Create the policy, or replace the settings of the one of that name (its
        creation date kept). Returns the record and whether it was new."""
        validate_policy(policy)
        if export_keep is not None and (export_to is None or export_keep < 1):
            raise InvalidArgument(
                f"policy {policy.name}: --export-keep needs --export-to and a count >= 1"
            )
        if export_compress and export_to is None:
            raise InvalidArgument(f"policy {policy.name}: --export-compress needs --export-to")
        row = self._row(policy.name)
        values: dict[str, object] = _columns(policy) | {
            "export_to": export_to,
            "export_keep": export_keep,
            "export_compress": export_compress,
            "last_op_date": now,
        }
        if row is None:
            values |= {"uuid": new_uuid(), "name": policy.name, "create_date": now}
            self.session.execute(insert(_POLICIES).values(values))
        else:
            self.session.execute(
                update(_POLICIES).where(_POLICIES.c.uuid == row.uuid).values(values)
            )
            self.session.expire(row)
        fresh = self._row(policy.name)
        assert fresh is not None
        return _record(fresh), row is None

    def _row(self, name: str) -> PolicyRow | None:
        return self.session.scalars(select(PolicyRow).where(_POLICIES.c.name == name)).first()

    def get(self, name: str) -> PolicyRecord:
        row = self._row(name)
        if row is None:
            raise NotFound(f"no snapshot policy named {name!r}")
        return _record(row)

    def all(self) -> list[PolicyRecord]:
        rows = self.session.scalars(select(PolicyRow).order_by(_POLICIES.c.name))
        return [_record(r) for r in rows]

    def remove(self, name: str) -> None:
        """The policy goes; the groups it took stay, with their marks (no policy left
        covering them prunes them: retention.policy_groups)."""
        done = self.session.execute(delete(_POLICIES).where(_POLICIES.c.name == name))
        if cast(CursorResult[Any], done).rowcount == 0:
            raise NotFound(f"no snapshot policy named {name!r}")

    def covering(self, vm_uuid: str, vm_name: str) -> list[Policy]:
        """The policies that cover a VM, by name order."""
        return [r.policy for r in self.all() if r.policy.covers(vm_uuid, vm_name)]

    def mark(self, group_uuid: str, *, policies: Iterable[str], label: str) -> None:
        """Mark a group as taken by these policies for this label."""
        self._set(group_uuid, policy=encode_marks(policies), policy_label=label)

    def set_protected(self, group_uuid: str, protected: bool) -> None:
        self._set(group_uuid, protected=protected)

    def _set(self, group_uuid: str, **values: object) -> None:
        done = self.session.execute(
            update(_GROUPS).where(_GROUPS.c.uuid == group_uuid).values(values)
        )
        if cast(CursorResult[Any], done).rowcount == 0:
            raise NotFound(f"no snapshot group {group_uuid}")

    def groups_of(self, vm_uuid: str) -> list[GroupMarks]:
        """A VM's groups with their marks, oldest first (plain columns, one query)."""
        g = _GROUPS.c
        rows = self.session.execute(
            select(g.uuid, g.name, g.vm_uuid, g.create_date, g.policy, g.policy_label, g.protected)
            .where(g.vm_uuid == vm_uuid)
            .order_by(g.create_date, g.uuid)
        )
        return [
            GroupMarks(
                uuid=r.uuid,
                name=r.name,
                vm_uuid=r.vm_uuid,
                create_date=r.create_date,
                policies=decode_marks(r.policy),
                label=r.policy_label,
                protected=bool(r.protected),
            )
            for r in rows
        ]

    # ZStack's scheduler triggers (rest/routes/policies.py)
    def insert_trigger(self, values: dict[str, object]) -> None:
        self.session.execute(insert(_TRIGGERS).values(values))

    def trigger(self, uuid: str) -> SchedulerTriggerRow | None:
        return self.session.get(SchedulerTriggerRow, uuid)

    def triggers(self) -> list[SchedulerTriggerRow]:
        query = select(SchedulerTriggerRow).order_by(_TRIGGERS.c.create_date, _TRIGGERS.c.uuid)
        return list(self.session.scalars(query))

    def set_trigger_jobs(self, uuid: str, jobs: list[str], *, now: datetime) -> None:
        self.session.execute(
            update(_TRIGGERS)
            .where(_TRIGGERS.c.uuid == uuid)
            .values(jobs=json.dumps(jobs), last_op_date=now)
        )

    def remove_trigger(self, uuid: str) -> None:
        done = self.session.execute(delete(_TRIGGERS).where(_TRIGGERS.c.uuid == uuid))
        if cast(CursorResult[Any], done).rowcount == 0:
            raise NotFound(f"no scheduler trigger {uuid}")
