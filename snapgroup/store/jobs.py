"""REST jobs in the store (tables.JobRow): what a poll of /v1/api-jobs/{uuid} answers,
from any `serve` process on the store, before or after a restart."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, select, update

from snapgroup.domain.errors import StoreError
from snapgroup.store.db import Database
from snapgroup.store.tables import JobRow

_JOBS: Table = JobRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class JobRecord:
    uuid: str
    kind: str
    state: str
    status: int | None
    document: dict[str, Any]
    owner: str


def _record(row: JobRow) -> JobRecord:
    document = json.loads(row.document) if row.document else {}
    return JobRecord(row.uuid, row.kind, row.state, row.status, document, row.owner)


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, uuid: str) -> JobRecord | None:
        with self.db.transaction() as session:
            row = session.get(JobRow, uuid)
            return None if row is None else _record(row)

    def create(self, uuid: str, kind: str, *, state: str, owner: str, now: datetime) -> JobRecord:
        """The new job, or the one of that uuid if there is one already (another request
        with the same X-Job-UUID, maybe in another process: it won the insert)."""
        found = self.get(uuid)
        if found is not None:
            return found
        row = JobRow(uuid=uuid, kind=kind, state=state, owner=owner, created=now)
        try:
            with self.db.transaction() as session:
                session.add(row)
        except StoreError:
            found = self.get(uuid)  # lost the race for the primary key
            if found is None:
                raise
            return found
        return _record(row)

    def set_state(self, uuid: str, state: str) -> None:
        with self.db.transaction() as session:
            session.execute(update(_JOBS).where(_JOBS.c.uuid == uuid).values(state=state))

    def finish(self, uuid: str, status: int, document: dict[str, Any], now: datetime) -> None:
        values = {"state": "Done", "status": status, "document": json.dumps(document)}
        with self.db.transaction() as session:
            session.execute(
                update(_JOBS).where(_JOBS.c.uuid == uuid).values(**values, finished=now)
            )

    def expire(self, before: datetime) -> None:
        """Forget the jobs finished before `before`."""
        with self.db.transaction() as session:
            session.execute(delete(_JOBS).where(_JOBS.c.finished < before))

    def unfinished_of(self, owner_prefix: str) -> list[JobRecord]:
        """Jobs not Done whose owner starts with `owner_prefix` (a host's)."""
        with self.db.transaction() as session:
            query = select(JobRow).where(
                _JOBS.c.state != "Done", _JOBS.c.owner.startswith(owner_prefix)
            )
            return [_record(row) for row in session.scalars(query)]
