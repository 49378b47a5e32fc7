"""The metadata schema (SQLModel). Nothing here is SQLite-only.

A volume's chain is described by parent links: the volume's current top file sits on
`VolumeRow.parent_snapshot_uuid`, each snapshot's file sits on its `parent_uuid`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, ForeignKey, Index, String
from sqlmodel import Field, SQLModel

UUID_LEN = 32


def _fk(target: str, *, cascade: bool = False, nullable: bool = False) -> Column[str]:
    return Column(
        String(UUID_LEN),
        ForeignKey(target, ondelete="CASCADE" if cascade else "RESTRICT"),
        index=True,
        nullable=nullable,
    )


class VolumeRow(SQLModel, table=True):
    __tablename__ = "volume"

    uuid: str = Field(primary_key=True, max_length=UUID_LEN)
    vm_uuid: str = Field(index=True, max_length=UUID_LEN)
    vm_name: str = Field(max_length=255)
    target: str = Field(max_length=32)
    device_id: int
    volume_type: str = Field(max_length=8)
    name: str = Field(max_length=255)
    install_path: str = Field(max_length=4096)  # the current top file
    format: str = Field(max_length=16)
    # Indexed: what sits on a snapshot is looked up by it (Repo.foreign_dependents).
    parent_snapshot_uuid: str | None = Field(default=None, max_length=UUID_LEN, index=True)
    attached: bool = True
    last_attach_date: datetime
    create_date: datetime
    last_op_date: datetime
    # The host whose libvirt runs the VM (snapgroup.infra.host). NULL: recorded before hosts
    # were; the first host to see the VM claims it.
    host: str | None = Field(default=None, max_length=255, index=True)


class SnapshotRow(SQLModel, table=True):
    __tablename__ = "volume_snapshot"

    uuid: str = Field(primary_key=True, max_length=UUID_LEN)
    volume_uuid: str = Field(sa_column=_fk("volume.uuid"))
    name: str = Field(max_length=1024)
    install_path: str = Field(max_length=4096)  # the frozen file holding this point in time
    parent_uuid: str | None = Field(default=None, max_length=UUID_LEN, index=True)
    deleted: bool = False
    create_date: datetime
    last_op_date: datetime
    # Why the file no longer holds this point in time (a merge into it failed midway);
    # NULL: intact. Such a snapshot's group is unavailable (availability.py).
    changed: str | None = Field(default=None, max_length=4096)


class GroupRow(SQLModel, table=True):
    __tablename__ = "volume_snapshot_group"
    # Queries page in the store's order, oldest first (store/group_query.py): the index
    # gives a page without sorting every group that shares a date.
    __table_args__ = (Index("ix_volume_snapshot_group_created_uuid", "create_date", "uuid"),)

    uuid: str = Field(primary_key=True, max_length=UUID_LEN)
    name: str = Field(max_length=255, index=True)  # q=name=... finds a group by it
    description: str | None = Field(default=None, max_length=2048)
    vm_uuid: str = Field(index=True, max_length=UUID_LEN)
    create_date: datetime = Field(index=True)
    last_op_date: datetime
    # snapgroup.ops.consistency. Nullable: groups recorded before these columns have none.
    consistency_type: str | None = Field(default=None, max_length=16)  # Application/Crash
    frozen_filesystems: str | None = None  # JSON list of the mountpoints frozen
    freeze_millis: int | None = None
    consistency_note: str | None = Field(default=None, max_length=4096)
    host: str | None = Field(default=None, max_length=255, index=True)  # as VolumeRow.host
    # Snapshot policies (store/policy_tables.py). NULL policy: made by hand, never pruned.
    policy: str | None = Field(default=None, max_length=1024)  # the policies' names, a,b
    policy_label: str | None = Field(default=None, max_length=16)  # hourly, daily, ...
    protected: bool | None = None  # True: never pruned, a plain delete refused
    # Memory groups (ops/memory_state.py): the VM's saved memory state, a file beside
    # its root disk named by UUID. NULL memory_file: a disk-only group.
    memory_file: str | None = Field(default=None, max_length=4096)
    memory_size: int | None = Field(default=None, sa_type=BigInteger)  # bytes
    memory_sha256: str | None = Field(default=None, max_length=64)  # hex
    memory_mode: str | None = Field(default=None, max_length=8)  # live / paused


class RefRow(SQLModel, table=True):
    __tablename__ = "volume_snapshot_group_ref"

    volume_snapshot_uuid: str = Field(
        sa_column=Column(
            String(UUID_LEN),
            ForeignKey("volume_snapshot.uuid", ondelete="CASCADE"),
            primary_key=True,
        )
    )
    group_uuid: str = Field(sa_column=_fk("volume_snapshot_group.uuid", cascade=True))
    device_id: int
    # Indexed: queries find a volume's groups by it (volumeSnapshotRefs.volumeUuid=).
    volume_uuid: str = Field(max_length=UUID_LEN, index=True)
    volume_name: str = Field(max_length=255)
    volume_type: str = Field(max_length=8)
    volume_last_attach_date: datetime
    create_date: datetime
    last_op_date: datetime


class OperationRow(SQLModel, table=True):
    """The operation journal: intent and progress of every group operation, written
    before the operation touches a file or the domain, so `recover` can finish it."""

    __tablename__ = "operation"

    uuid: str = Field(primary_key=True, max_length=UUID_LEN)
    kind: str = Field(max_length=32)  # create, delete, ...
    vm_uuid: str = Field(index=True, max_length=UUID_LEN)
    group_uuid: str | None = Field(default=None, max_length=UUID_LEN)
    state: str = Field(index=True, max_length=16)  # running, done, failed, rolled-back, ...
    step: str = Field(max_length=64)
    plan: str  # JSON: everything recovery needs (files created / removed, merges)
    detail: str | None = Field(default=None, max_length=4096)
    host: str = Field(max_length=255)
    pid: int
    started: datetime
    updated: datetime


class AccountRow(SQLModel, table=True):
    """An account of the REST API (snapgroup.rest.auth). The password is never stored:
    only a salted scrypt hash of the SHA-512 digest ZStack clients send."""

    __tablename__ = "account"

    uuid: str = Field(primary_key=True, max_length=UUID_LEN)
    name: str = Field(max_length=255, unique=True)
    password_hash: str = Field(max_length=512)
    create_date: datetime
    last_op_date: datetime


class SessionRow(SQLModel, table=True):
    """A login session of the REST API: `Authorization: OAuth <uuid>` until it expires."""

    __tablename__ = "session"

    uuid: str = Field(primary_key=True, max_length=UUID_LEN)
    account_uuid: str = Field(
        sa_column=_fk("account.uuid", cascade=True)  # a deleted account's sessions go
    )
    create_date: datetime
    expired_date: datetime = Field(index=True)


class JobRow(SQLModel, table=True):
    """A REST job (snapgroup.rest.jobs): its state and result, shared by every `serve`
    process on the store and kept across restarts until it expires."""

    __tablename__ = "api_job"

    uuid: str = Field(primary_key=True, max_length=UUID_LEN)
    kind: str = Field(max_length=32)  # create, delete, ... : a uuid names one request
    state: str = Field(max_length=16)  # Waiting, Running, Done
    status: int | None = None  # the poll's answer once Done: 200 or 503
    document: str | None = None  # JSON: the result or error document
    owner: str = Field(max_length=300)  # host:pid:start of the process running it
    created: datetime
    finished: datetime | None = Field(default=None, index=True)
