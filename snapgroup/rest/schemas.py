"""The seed's request and response documents as pydantic models.

Requests are validated strictly (a number is not a name), unknown fields are ignored as
ZStack does. Response models only document the wire format in the OpenAPI document:
the routes send the engine's own dicts (inventory.py), so what a client gets is exactly
what the CLI prints with --json.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from snapgroup.domain.validate import DESCRIPTION_MAX, NAME_MAX

# Patterns say in the OpenAPI document what validate.py checks, so a schema-valid
# request is a valid one (the fuzzer holds the API to that).
UUID = "[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
UUID_PATTERN = f"^(?:{UUID})$"
UUID_LIST_PATTERN = f"^(?:{UUID})(?:,(?:{UUID}))*$"
# No control character; at least one that is not a space.
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
DESCRIPTION_PATTERN = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*$"  # newlines and tabs are fine


class StrictBody(BaseModel):
    """A request body as ZStack's SDK sends it: types as declared, unknown keys ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


_Request = StrictBody


class _Tagged(_Request):
    # Accepted as the seed allows; snapgroup has no tags and ignores them.
    systemTags: list[str] | None = None
    userTags: list[str] | None = None


class CreateGroupParams(_Request):
    rootVolumeUuid: str = Field(pattern=UUID_PATTERN, description="the VM's root volume")
    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    description: str | None = Field(
        default=None, max_length=DESCRIPTION_MAX, pattern=DESCRIPTION_PATTERN
    )
    resourceUuid: str | None = Field(
        default=None, pattern=UUID_PATTERN, description="the new group's uuid"
    )
    tagUuids: list[str] | None = None
    withMemory: bool | None = Field(
        default=None,
        description="ZStack SDK's: save the running VM's memory state too; a revert "
        "resumes the VM at that moment (a stopped VM is refused)",
    )


class CreateGroupRequest(_Tagged):
    params: CreateGroupParams


class UpdateGroupParams(_Request):
    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    description: str | None = Field(
        default=None, max_length=DESCRIPTION_MAX, pattern=DESCRIPTION_PATTERN
    )


class RevertParams(_Request):
    """ZStack's revert takes nothing but the group's uuid (in the URL)."""


class _Action(_Tagged):
    # Exactly one action per body: a second action's key is refused, not ignored.
    model_config = ConfigDict(strict=True, extra="forbid")


class UpdateAction(_Action):
    updateVolumeSnapshotGroup: UpdateGroupParams


class RevertAction(_Action):
    revertVmFromSnapshotGroup: RevertParams


# PUT .../actions: the action is named by its key, as in ZStack's action APIs.
GroupActionRequest = UpdateAction | RevertAction


class LoginParams(_Request):
    accountName: str = Field(min_length=1, max_length=255)
    password: str = Field(
        min_length=1, max_length=1024, description="SHA-512 hex digest of the password"
    )


class LoginRequest(_Request):
    logInByAccount: LoginParams


# -- responses (documentation) ------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorCode(_Response):
    code: str
    description: str
    details: str | None = None
    elaboration: str | None = None
    opaque: dict[str, Any] | None = None
    cause: ErrorCode | None = None


class ErrorDocument(_Response):
    error: ErrorCode


class Location(_Response):
    location: str = Field(description="GET it (with the session) until it answers 200/503")


class GroupRefInventory(_Response):
    volumeSnapshotUuid: str
    volumeSnapshotGroupUuid: str
    deviceId: int
    snapshotDeleted: bool
    volumeUuid: str
    volumeName: str
    volumeType: str
    volumeSnapshotInstallPath: str
    volumeSnapshotName: str
    createDate: str
    lastOpDate: str
    snapshotStatus: str = Field("Ready", description="Changed: a merge into its file failed")
    statusReason: str | None = None


class MemoryStateInventory(_Response):
    file: str
    size: int
    sha256: str
    mode: str = Field(description="live: the guest ran during the copy; paused: it did not")


class GroupInventory(_Response):
    uuid: str
    snapshotCount: int
    name: str
    description: str | None = None
    vmInstanceUuid: str
    createDate: str
    lastOpDate: str
    volumeSnapshotRefs: list[GroupRefInventory]
    withMemory: bool = Field(False, description="**ours**: the group holds a memory state")
    memory: MemoryStateInventory | None = Field(
        None, description="**ours**: the memory file (null: a disk-only group)"
    )


class InventoryDocument(_Response):
    inventory: GroupInventory
    error: ErrorCode | None = None


class QueryDocument(_Response):
    inventories: list[dict[str, Any]] | None = None
    total: int | None = None


class DeleteResultItem(_Response):
    snapshotUuid: str
    volumeUuid: str
    success: bool
    error: ErrorCode | None = None


class ResultsDocument(_Response):
    """Delete: one result per snapshot; revert: one per volume. `error` is set when any
    of them failed (the job then answers 503)."""

    results: list[dict[str, Any]]
    error: ErrorCode | None = None


class Availability(_Response):
    uuid: str
    available: bool
    reason: str | None = None


class AvailabilityDocument(_Response):
    results: list[Availability]


class SessionInventory(_Response):
    uuid: str
    accountUuid: str
    userUuid: str
    expiredDate: str
    createDate: str


class SessionDocument(_Response):
    inventory: SessionInventory


class ValidSessionDocument(_Response):
    validSession: bool


# The read-only resources' inventories (QueryVolume, QueryVmInstance, QueryVolumeSnapshot,
# QueryVolumeSnapshotTree). Not required: `fields=` leaves only the fields it names; a
# field present has the type said here.
_ABSENT: Any = None


class VolumeInventory(_Response):
    uuid: str = _ABSENT
    name: str = _ABSENT
    description: str | None = None
    vmInstanceUuid: str | None = Field(_ABSENT, description="null: detached")
    lastVmInstanceUuid: str = _ABSENT
    installPath: str = Field(_ABSENT, description="the disk's current top file")
    type: Literal["Root", "Data"] = _ABSENT
    format: str = _ABSENT
    deviceId: int = _ABSENT
    state: str = _ABSENT
    status: str = _ABSENT
    isShareable: bool = _ABSENT
    createDate: str = _ABSENT
    lastOpDate: str = _ABSENT
    lastAttachDate: str = _ABSENT


class VolumeQueryDocument(_Response):
    """`{"inventories": [VolumeInventory]}` (+ "total"), or `{"total"}` with count."""

    inventories: list[VolumeInventory] = _ABSENT
    total: int = _ABSENT


class VmInstanceInventory(_Response):
    uuid: str = _ABSENT
    name: str = _ABSENT
    description: str | None = None
    state: str = Field(_ABSENT, description="libvirt's now; Destroyed: recorded, undefined since")
    rootVolumeUuid: str | None = Field(_ABSENT, description="null: the VM is not recorded yet")
    type: str = _ABSENT
    hypervisorType: str = _ABSENT
    createDate: str | None = Field(_ABSENT, description="its first recorded volume's")
    lastOpDate: str | None = _ABSENT
    allVolumes: list[VolumeInventory] = Field(_ABSENT, description="empty: not recorded yet")
    vmNics: list[Any] = _ABSENT
    vmCdRoms: list[Any] = _ABSENT


class VmQueryDocument(_Response):
    """`{"inventories": [VmInstanceInventory]}` (+ "total"), or `{"total"}` with count."""

    inventories: list[VmInstanceInventory] = _ABSENT
    total: int = _ABSENT


class VolumeSnapshotInventory(_Response):
    uuid: str = _ABSENT
    name: str = _ABSENT
    description: str | None = None
    type: str = _ABSENT
    format: str = _ABSENT
    state: str = _ABSENT
    volumeUuid: str = _ABSENT
    treeUuid: str = Field(_ABSENT, description="the volume's: one tree per volume")
    parentUuid: str | None = _ABSENT
    primaryStorageInstallPath: str = _ABSENT
    volumeType: Literal["Root", "Data"] = _ABSENT
    groupUuid: str | None = Field(_ABSENT, description="null: not in a group")
    latest: bool = Field(_ABSENT, description="the volume's top sits on it")
    status: Literal["Ready", "Changed"] = _ABSENT
    statusReason: str | None = None
    createDate: str = _ABSENT
    lastOpDate: str = _ABSENT


class SnapshotQueryDocument(_Response):
    """`{"inventories": [VolumeSnapshotInventory]}` (+ "total"), or `{"total"}`."""

    inventories: list[VolumeSnapshotInventory] = _ABSENT
    total: int = _ABSENT


class SnapshotLeaf(_Response):
    """A snapshot and those made on it. A tree whose snapshots have several roots (a
    parent deleted) has a root of `inventory` null holding them as children."""

    inventory: VolumeSnapshotInventory | None
    parentUuid: str | None = None
    current: bool = Field(_ABSENT, description="**ours**: on the branch the volume's top is on")
    children: list[SnapshotLeaf]


class VolumeSnapshotTreeInventory(_Response):
    uuid: str = Field(description="the volume's")
    volumeUuid: str
    current: bool = Field(description="the volume's top sits on a snapshot of it")
    status: str
    tree: SnapshotLeaf
    createDate: str
    lastOpDate: str


class TreeQueryDocument(_Response):
    """`{"inventories": [VolumeSnapshotTreeInventory]}` (+ "total"), or `{"total"}`."""

    inventories: list[VolumeSnapshotTreeInventory] = _ABSENT
    total: int = _ABSENT
