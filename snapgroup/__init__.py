"""snapgroup: consistent snapshot groups of a libvirt VM's qcow2 disks."""

from snapgroup.api import open_engine
from snapgroup.consistency import Consistency
from snapgroup.engine import DeleteMode, Engine
from snapgroup.errors import (
    AuthenticationError,
    BatchDeleteError,
    Busy,
    DeleteFailed,
    HypervisorError,
    HypervisorUnavailable,
    ImageToolError,
    InternalError,
    InvalidArgument,
    InvalidSession,
    NotFound,
    OperationError,
    SnapgroupError,
    SnapshotWrongStatus,
    StoreError,
    Timeout,
)
from snapgroup.inventory import DeleteReport, DeleteResult, Group, GroupRef, VolumeView

__all__ = [
    "AuthenticationError",
    "BatchDeleteError",
    "Busy",
    "Consistency",
    "DeleteFailed",
    "DeleteMode",
    "DeleteReport",
    "DeleteResult",
    "Engine",
    "Group",
    "GroupRef",
    "HypervisorError",
    "HypervisorUnavailable",
    "ImageToolError",
    "InternalError",
    "InvalidArgument",
    "InvalidSession",
    "NotFound",
    "OperationError",
    "SnapgroupError",
    "SnapshotWrongStatus",
    "StoreError",
    "Timeout",
    "VolumeView",
    "open_engine",
]
