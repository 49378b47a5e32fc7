"""Guest filesystems read through an appliance: GuestFiles, and the session it opens
(GuestSession)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from snapgroup.domain.guest_files import FileEntry, GuestDisk, GuestFilesystem


class GuestSession(Protocol):
    """One appliance, started on a set of disks (opened read-only) and kept for several
    requests. Devices are the appliance's (GuestFilesystem.device); paths are inside
    that filesystem, resolved by the appliance. Raises NotFound (no such path),
    InvalidArgument (not a directory / not a regular file), FilesystemError (cannot be
    mounted: damaged, not a filesystem) and GuestToolError (the appliance failed)."""

    def filesystems(self) -> list[GuestFilesystem]: ...

    def list_dir(self, device: str, path: str) -> list[FileEntry]: ...

    def stat(self, device: str, path: str) -> FileEntry:
        """lstat: a symlink is described, not followed."""
        ...

    def read_file(self, device: str, path: str) -> Iterator[bytes]:
        """A regular file's bytes. Checked before the first chunk; a failure later
        raises from the iterator."""
        ...

    def read_tree(self, device: str, path: str) -> Iterator[bytes]:
        """A directory's contents as a tar stream (numeric owners, mtimes, modes;
        member names relative to it). For the host to unpack with care: whatever
        names and links it holds are the guest's."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> GuestSession: ...

    def __exit__(self, *exc: object) -> None: ...


class GuestFiles(Protocol):
    """Guest filesystems read by an appliance (libguestfs: a small VM whose own kernel
    parses them), never by the host's kernel. Nothing is ever written to the disks."""

    def open(self, disks: Sequence[GuestDisk]) -> GuestSession: ...

    def mount(
        self, disks: Sequence[GuestDisk], device: str, mountpoint: str, *, keep_fd: int | None
    ) -> None:
        """Expose one filesystem read-only at `mountpoint` (FUSE, served by the
        appliance) until unmount(); returns once it is mounted. `keep_fd`: a descriptor
        the serving process inherits and keeps open until it exits (a lock)."""
        ...

    def unmount(self, mountpoint: str) -> None:
        """Unmount what mount() mounted there; InvalidArgument when it is not ours."""
        ...
