"""Engine's methods on the files of any group or backup (ops/files.py,
ops/file_mounts.py), read through the GuestFiles port (libguestfs by default)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snapgroup.ops import file_mounts
    from snapgroup.ops import files as file_ops
    from snapgroup.ops.context import OpContext
    from snapgroup.ops.guest_sources import FilesSource
    from snapgroup.ports import GuestFiles


class Files:
    """Browse, extract, download and mount a group's or a backup's files."""

    ctx: OpContext
    _guest_files: GuestFiles | None = None

    @property
    def guest_files(self) -> GuestFiles:
        """The file browser's appliance (libguestfs): reads guests' filesystems."""
        if self._guest_files is None:
            from snapgroup.adapters.guest_files import LibguestfsFiles

            self._guest_files = LibguestfsFiles()
        return self._guest_files

    @guest_files.setter
    def guest_files(self, value: GuestFiles) -> None:
        self._guest_files = value

    def files(
        self,
        source: FilesSource,
        *,
        disk: str | None = None,
        fs: str | None = None,
        path: str | None = None,
    ) -> file_ops.Listing:
        from snapgroup.ops import files as file_ops

        return file_ops.browse(self.ctx, self.guest_files, source, disk=disk, fs=fs, path=path)

    def extract(
        self,
        source: FilesSource,
        paths: Sequence[str],
        *,
        to: str,
        disk: str | None = None,
        fs: str | None = None,
    ) -> list[file_ops.Extracted]:
        from snapgroup.ops import files as file_ops

        return file_ops.extract(
            self.ctx, self.guest_files, source, paths=paths, to=to, disk=disk, fs=fs
        )

    def download(
        self, source: FilesSource, path: str, *, disk: str | None = None, fs: str | None = None
    ) -> file_ops.Download:
        from snapgroup.ops import files as file_ops

        return file_ops.download(self.ctx, self.guest_files, source, path=path, disk=disk, fs=fs)

    def mount(
        self,
        source: FilesSource,
        mountpoint: str,
        *,
        disk: str | None = None,
        fs: str | None = None,
    ) -> file_mounts.Mounted:
        from snapgroup.ops import file_mounts

        return file_mounts.mount(
            self.ctx, self.guest_files, source, mountpoint=mountpoint, disk=disk, fs=fs
        )

    def umount(self, mountpoint: str) -> None:
        from snapgroup.ops import file_mounts

        file_mounts.umount(self.ctx, self.guest_files, mountpoint)
