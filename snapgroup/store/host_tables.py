"""The host registry (domain/ownership.py): one row per host of a shared store, written
by the host itself when it operates or serves. Portable SQL only; a store made before
this table gets it when a newer snapgroup opens it (create_all makes missing tables)."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel


class HostRow(SQLModel, table=True):
    __tablename__ = "snapgroup_host"

    name: str = Field(primary_key=True, max_length=255)  # SNAPGROUP_HOST or the hostname
    address: str | None = Field(default=None, max_length=1024)  # its `serve`, if serving
    lease_expires: datetime  # its VMs are its own until then, whatever other hosts see
    heartbeat: datetime  # when it last renewed the lease (and made its report)
    running: str | None = None  # JSON list: the UUIDs of its VMs running there then
    retired: datetime | None = (
        None  # `snapgroup hosts --retire`: down for good (a renewal clears it)
    )


class QueuedRequestRow(SQLModel, table=True):
    """A REST request for a VM another host owns, queued for that host when its `serve`
    could not be reached (rest/queue.py): its job (JobRow, owner `queued:<host>`) is
    polled meanwhile; the host's `serve` replays the request to itself and deletes this."""

    __tablename__ = "snapgroup_queued_request"

    job_uuid: str = Field(primary_key=True, max_length=32)
    host: str = Field(index=True, max_length=255)  # the owner it waits for
    method: str = Field(max_length=8)
    path: str = Field(max_length=4096)  # below the API's prefix: /volume-snapshots/group
    query: str = Field(default="", max_length=8192)
    body: str = ""  # the request's JSON document, as sent
    account_uuid: str = Field(max_length=32)  # whose request: the replay acts for them
    created: datetime
