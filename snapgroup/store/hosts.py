"""The host registry's rows (host_tables.HostRow) and a VM's move from one host to
another (a take-over: domain/ownership.py). Never commits: the caller's transaction does."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from sqlalchemy import select, union, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from snapgroup.domain.ownership import HostLease
from snapgroup.store.host_tables import HostRow
from snapgroup.store.tables import GroupRow, OperationRow, VolumeRow


def _utc(moment: datetime) -> datetime:
    """The drivers give back naive times (the columns hold UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _lease(row: HostRow) -> HostLease:
    running = None if row.running is None else frozenset(json.loads(row.running))
    retired = None if row.retired is None else _utc(row.retired)
    return HostLease(
        row.name, _utc(row.lease_expires), _utc(row.heartbeat), running, row.address, retired
    )


class HostRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def lease(self, name: str) -> HostLease | None:
        row = self.session.get(HostRow, name)
        return None if row is None else _lease(row)

    def leases(self) -> list[HostLease]:
        rows = self.session.scalars(select(HostRow).order_by(col(HostRow.name)))
        return [_lease(row) for row in rows]

    def renew(
        self,
        name: str,
        *,
        now: datetime,
        expires: datetime,
        running: Iterable[str] | None,
        address: str | None = None,
        keep_address: bool = True,
    ) -> None:
        """The host's lease until `expires`, with its report (the VMs running there;
        None: it cannot tell, libvirt does not answer).
        `address`: its `serve`; None with keep_address: as recorded (a command run
        beside a serving host does not erase it)."""
        values = {
            "lease_expires": now if expires < now else expires,
            "heartbeat": now,
            "running": None if running is None else json.dumps(sorted(running)),
            "retired": None,  # it runs: retired no more
        }
        if address is not None or not keep_address:
            values["address"] = address
        dialect = self.session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert(HostRow).values(name=name, **values)
        # One statement: two processes of a host renewing at once never collide.
        self.session.execute(statement.on_conflict_do_update(index_elements=["name"], set_=values))

    def retire(
        self,
        name: str,
        *,
        by: str,
        now: datetime,
        vms: Iterable[str],
        new_uuid: Callable[[], str],
        detail: str,
    ) -> None:
        """Host `name` declared down for good by host `by`: its address erased; journaled
        as a done 'retire' operation per VM it owns (one with no VM when it owns none),
        its last report in the plan."""
        row = self.session.get(HostRow, name)
        assert row is not None
        plan = {"host": name, "running": json.loads(row.running) if row.running else None}
        self.session.execute(
            update(HostRow).where(col(HostRow.name) == name).values(retired=now, address=None)
        )
        for vm_uuid in sorted(vms) or [""]:
            self.session.add(
                OperationRow(
                    uuid=new_uuid(),
                    kind="retire",
                    vm_uuid=vm_uuid,
                    state="done",
                    step="done",
                    plan=json.dumps(plan),
                    detail=detail[:4096],
                    host=by,
                    pid=os.getpid(),
                    started=now,
                    updated=now,
                )
            )

    def vm_hosts(self) -> dict[str, set[str]]:
        """host -> the VMs its volume and group rows name it owner of."""
        pairs = union(
            select(col(VolumeRow.host), col(VolumeRow.vm_uuid)).where(
                col(VolumeRow.host).is_not(None)
            ),
            select(col(GroupRow.host), col(GroupRow.vm_uuid)).where(
                col(GroupRow.host).is_not(None)
            ),
        )
        found: dict[str, set[str]] = {}
        for host, vm_uuid in self.session.execute(pairs):
            found.setdefault(host, set()).add(vm_uuid)
        return found

    def move_vm(
        self,
        vm_uuid: str,
        *,
        from_host: str,
        to_host: str,
        now: datetime,
        op_uuid: str,
        reason: str,
    ) -> int:
        """The VM's rows of `from_host` become `to_host`'s: its volumes, its groups (their
        refs and snapshots follow through them) and its unfinished operations (the new
        owner's recovery finishes them on the shared files). Journaled as a done
        'takeover' operation. The number of rows moved."""
        moved: int = 0
        for table in (VolumeRow, GroupRow):
            result = self.session.execute(
                update(table)
                .where(col(table.vm_uuid) == vm_uuid, col(table.host) == from_host)
                .values(host=to_host)
            )
            moved += int(result.rowcount)  # type: ignore[attr-defined]
        result = self.session.execute(
            update(OperationRow)
            .where(
                col(OperationRow.vm_uuid) == vm_uuid,
                col(OperationRow.host) == from_host,
                col(OperationRow.state) == "running",
            )
            # pid 0: its process was another host's, none of this host's
            .values(host=to_host, pid=0)
        )
        moved += int(result.rowcount)  # type: ignore[attr-defined]
        plan = {"from": from_host, "to": to_host, "rows": moved}
        self.session.add(
            OperationRow(
                uuid=op_uuid,
                kind="takeover",
                vm_uuid=vm_uuid,
                state="done",
                step="done",
                plan=json.dumps(plan),
                detail=reason[:4096],
                host=to_host,
                pid=os.getpid(),
                started=now,
                updated=now,
            )
        )
        return moved
