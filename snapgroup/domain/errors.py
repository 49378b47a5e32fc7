"""One error family. Every error carries a stable code in the seed's style.

The codes are ZStack's where ZStack has one (SYS.*, VOLUME_SNAPSHOT.*); the
README lists them all.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs ~3 ms of a command's start-up
if TYPE_CHECKING:
    from typing import Any


class SnapgroupError(Exception):
    code = "SYS.1001"
    description = "internal error"

    def __init__(self, details: str, *, cause: SnapgroupError | None = None) -> None:
        super().__init__(details)
        self.details = details
        self.cause = cause

    def to_dict(self) -> dict[str, Any]:
        """The seed's ErrorCode shape."""
        return {
            "code": self.code,
            "description": self.description,
            "details": self.details,
            "elaboration": None,
            "opaque": None,
            "cause": self.cause.to_dict() if self.cause else None,
        }


class InternalError(SnapgroupError):
    code = "SYS.1001"
    description = "internal error"


class NotFound(SnapgroupError):
    code = "SYS.1003"
    description = "resource not found"


class DeleteFailed(SnapgroupError):
    code = "SYS.1004"
    description = "failed to delete the resource"


class Timeout(SnapgroupError):
    code = "SYS.1005"
    description = "operation timeout"


class Busy(SnapgroupError):
    """Another operation holds the VM's lock."""

    code = "SYS.1011"
    description = "the VM is busy with another operation"

    @classmethod
    def waited(cls, what: str, wait: float) -> Busy:
        """`what` is in progress, after waiting `wait` seconds for it (0: not at all)."""
        return cls(
            f"{what} is in progress"
            + (f" (waited {wait:g} s)" if wait else " (use --wait SECONDS)")
        )


class OperationError(SnapgroupError):
    """The request is valid but cannot be carried out in the current state."""

    code = "SYS.1006"
    description = "operation error"


class InvalidArgument(SnapgroupError):
    code = "SYS.1007"
    description = "invalid argument"


class HypervisorUnavailable(SnapgroupError):
    code = "HOST.1001"
    description = "cannot reach the hypervisor (libvirtd)"


class HypervisorError(SnapgroupError):
    code = "HOST.1002"
    description = "the hypervisor refused or failed the request"


class ImageToolError(SnapgroupError):
    code = "HOST.1003"
    description = "qemu-img failed"


class GuestToolError(SnapgroupError):
    """The file browser's appliance (libguestfs) could not be started or failed."""

    code = "HOST.1004"
    description = "the file browser's appliance (libguestfs) failed"


class FilesystemError(SnapgroupError):
    """A guest filesystem the appliance cannot read: a damaged superblock, not a
    filesystem at all, a type it does not know. Nothing was changed anywhere."""

    code = "FILES.1000"
    description = "the guest filesystem cannot be read"


class StoreError(SnapgroupError):
    code = "SYS.1010"
    description = "metadata store unavailable or corrupt"


class SnapshotWrongStatus(SnapgroupError):
    code = "VOLUME_SNAPSHOT.1000"
    description = "volume snapshot is in a wrong status"


class BatchDeleteError(SnapgroupError):
    code = "VOLUME_SNAPSHOT.1002"
    description = "failed to delete some snapshots of the group"


class AuthenticationError(SnapgroupError):
    """A REST login with a wrong account name or password (ZStack's ID.1000)."""

    code = "ID.1000"
    description = "wrong account name or password"


class InvalidSession(SnapgroupError):
    """A REST call without a session, or with an unknown or expired one (ID.1001)."""

    code = "ID.1001"
    description = "invalid or expired session"


ALL_ERRORS: tuple[type[SnapgroupError], ...] = (
    InternalError,
    NotFound,
    DeleteFailed,
    Timeout,
    Busy,
    OperationError,
    InvalidArgument,
    HypervisorUnavailable,
    HypervisorError,
    ImageToolError,
    GuestToolError,
    FilesystemError,
    StoreError,
    SnapshotWrongStatus,
    BatchDeleteError,
    AuthenticationError,
    InvalidSession,
)
