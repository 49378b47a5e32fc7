"""REST requests queued for the host that owns their VM (host_tables.QueuedRequestRow)
beside their jobs (tables.JobRow, owner `queued:<host>` until that host claims them).
What runs them: snapgroup.rest.queue."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, select, update
from sqlmodel import col

from snapgroup.domain.errors import StoreError
from snapgroup.store.db import Database
from snapgroup.store.host_tables import QueuedRequestRow
from snapgroup.store.tables import AccountRow, JobRow

_JOBS: Table = JobRow.__table__  # type: ignore[attr-defined]
QUEUED = "queued:"  # a queued job's owner: QUEUED + the host it waits for


@dataclass(frozen=True)
class QueuedRequest:
    job_uuid: str
    kind: str
    host: str
    method: str
    path: str
    query: str
    body: str
    account_uuid: str


def _request(row: QueuedRequestRow, kind: str) -> QueuedRequest:
    return QueuedRequest(
        row.job_uuid, kind, row.host, row.method, row.path, row.query, row.body, row.account_uuid
    )


class RequestQueue:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, request: QueuedRequest, *, state: str, now: datetime) -> bool:
        """The job (in `state`) and its request, in one transaction; False when a job
        of that uuid exists already (the same request sent again, or forwarded and
        started before the owner stopped answering): nothing queued."""
        try:
            with self.db.transaction() as session:
                if session.get(JobRow, request.job_uuid) is not None:
                    return False
                session.add(
                    JobRow(
                        uuid=request.job_uuid,
                        kind=request.kind,
                        state=state,
                        owner=QUEUED + request.host,
                        created=now,
                    )
                )
                session.add(
                    QueuedRequestRow(
                        job_uuid=request.job_uuid,
                        host=request.host,
                        method=request.method,
                        path=request.path,
                        query=request.query,
                        body=request.body,
                        account_uuid=request.account_uuid,
                        created=now,
                    )
                )
        except StoreError:  # lost the race for the job's uuid
            with self.db.transaction() as session:
                if session.get(JobRow, request.job_uuid) is not None:
                    return False
            raise
        return True

    def claim(
        self, host: str, owner: str, *, stale: Callable[[str], bool] = lambda _: False
    ) -> list[QueuedRequest]:
        """The requests queued for `host`, oldest first, each now `owner`'s (a process of
        that host's): one claimer each, whatever other processes of the host do. Also
        those a claimer left in the queue unanswered: `owner` itself (its replay broke
        off) or one `stale` says is gone (a process of the host that died)."""
        with self.db.transaction() as session:
            rows = list(
                session.scalars(
                    select(QueuedRequestRow)
                    .where(col(QueuedRequestRow.host) == host)
                    .order_by(col(QueuedRequestRow.created))
                )
            )
        claimed = []
        for row in rows:
            with self.db.transaction() as session:
                job = session.execute(
                    select(_JOBS.c.owner, _JOBS.c.kind, _JOBS.c.state).where(
                        _JOBS.c.uuid == row.job_uuid
                    )
                ).first()
                if job is None or job.state != "Waiting":  # expired, or started: replayed
                    session.execute(
                        delete(QueuedRequestRow).where(
                            col(QueuedRequestRow.job_uuid) == row.job_uuid
                        )
                    )
                    continue
                was, kind = job.owner, job.kind
                if was not in (QUEUED + host, owner) and not stale(was):
                    continue  # another process of the host replays it now
                taken = session.execute(
                    update(_JOBS)
                    .where(_JOBS.c.uuid == row.job_uuid, _JOBS.c.owner == was)
                    .values(owner=owner)
                )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                claimed.append(_request(row, kind))
        return claimed

    def account_exists(self, account_uuid: str) -> bool:
        with self.db.transaction() as session:
            return session.get(AccountRow, account_uuid) is not None

    def release(self, request: QueuedRequest, owner: str) -> None:
        """A claimed request back in the queue (its replay could not be sent)."""
        with self.db.transaction() as session:
            session.execute(
                update(_JOBS)
                .where(_JOBS.c.uuid == request.job_uuid, _JOBS.c.owner == owner)
                .values(owner=QUEUED + request.host)
            )

    def done(self, job_uuid: str) -> None:
        """The request replayed: it leaves the queue (its job goes on as the owner's)."""
        with self.db.transaction() as session:
            session.execute(
                delete(QueuedRequestRow).where(col(QueuedRequestRow.job_uuid) == job_uuid)
            )

    def fail(
        self,
        *,
        now: datetime,
        status: int,
        document: dict[str, Any],
        host: str | None = None,
        before: datetime | None = None,
    ) -> list[str]:
        """The queued jobs of `host` (None: any host's) queued before `before` (None:
        whenever) finished with `status` and the error `document`, out of the queue.
        Their uuids."""
        query = select(QueuedRequestRow)
        if host is not None:
            query = query.where(col(QueuedRequestRow.host) == host)
        if before is not None:
            query = query.where(col(QueuedRequestRow.created) < before)
        failed = []
        with self.db.transaction() as session:
            for row in list(session.scalars(query)):
                session.execute(
                    update(_JOBS)
                    .where(_JOBS.c.uuid == row.job_uuid, _JOBS.c.state != "Done")
                    .values(
                        state="Done", status=status, document=json.dumps(document), finished=now
                    )
                )
                session.delete(row)
                failed.append(row.job_uuid)
        return failed

    def waiting(self) -> dict[str, int]:
        """host -> how many requests wait for it."""
        found: dict[str, int] = {}
        with self.db.transaction() as session:
            for host in session.scalars(select(col(QueuedRequestRow.host))):
                found[host] = found.get(host, 0) + 1
        return found
