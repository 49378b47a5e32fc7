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
