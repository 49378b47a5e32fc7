"""Snapshot policies in the store (snapgroup.domain.retention.Policy). Portable SQL only.

A group a policy took carries its marks in GroupRow (policy, policy_label, protected).
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from snapgroup.store.tables import UUID_LEN


class PolicyRow(SQLModel, table=True):
    __tablename__ = "snapshot_policy"

    uuid: str = Field(primary_key=True, max_length=UUID_LEN)
    name: str = Field(max_length=64, unique=True)
    # JSON lists of VM names or UUIDs, as given. vms NULL: every VM but those excluded.
    vms: str | None = None
    exclude: str = "[]"
    frequent: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    every: int = 15  # minutes between frequent groups
    consistency: str = Field(default="auto", max_length=16)
    min_free_percent: float | None = None
    # Where and how many groups to export (a later issue); NULL: no export.
    export_to: str | None = Field(default=None, max_length=4096)
    export_keep: int | None = None
    export_compress: bool | None = None  # NULL (stores made before it): not compressed
    with_memory: bool | None = None  # memory groups; NULL (stores made before it): no
    create_date: datetime
    last_op_date: datetime


class SchedulerTriggerRow(SQLModel, table=True):
    """ZStack's scheduler trigger (REST CreateSchedulerTrigger): a schedule the
    snapshot-group jobs added to it (AddSchedulerJobToSchedulerTrigger) take their slot
    from. Kept as given, for the API's inventories."""

    __tablename__ = "scheduler_trigger"

    uuid: str = Field(primary_key=True, max_length=UUID_LEN)
    name: str = Field(max_length=255)
    description: str | None = Field(default=None, max_length=2048)
    scheduler_type: str = Field(max_length=16)  # simple (cron is refused)
    interval: int | None = None  # seconds between runs
    repeat_count: int | None = None
    start_time: datetime | None = None
    jobs: str = "[]"  # JSON list: the jobs added to it
    create_date: datetime
    last_op_date: datetime
