"""snapgroup: consistent snapshot groups of a libvirt VM's qcow2 disks.

The names below load on first use (PEP 562): the `snapgroup` command's launcher lives in
this package and must start without importing the engine's stack."""

from __future__ import annotations

# Not typing.TYPE_CHECKING: importing typing alone costs the launcher ~14 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from snapgroup.api import DeleteMode, Engine, open_engine
    from snapgroup.domain.errors import (
        AuthenticationError,
        BatchDeleteError,
        Busy,
        DeleteFailed,
        FilesystemError,
        GuestToolError,
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
    from snapgroup.domain.inventory import DeleteReport, DeleteResult, Group, GroupRef, VolumeView
    from snapgroup.ops.consistency import Consistency

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
    "FilesystemError",
    "Group",
    "GroupRef",
    "GuestToolError",
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

_HOMES = {
    "open_engine": "snapgroup.api",
    "Consistency": "snapgroup.ops.consistency",
    "DeleteMode": "snapgroup.api",
    "Engine": "snapgroup.api",
    "DeleteReport": "snapgroup.domain.inventory",
    "DeleteResult": "snapgroup.domain.inventory",
    "Group": "snapgroup.domain.inventory",
    "GroupRef": "snapgroup.domain.inventory",
    "VolumeView": "snapgroup.domain.inventory",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'snapgroup' has no attribute {name!r}")
    import importlib  # here: with warnings, ~0.5 ms of every launcher's start

    value = getattr(importlib.import_module(_HOMES.get(name, "snapgroup.domain.errors")), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
