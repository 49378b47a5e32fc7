"""A backup repository's port (BackupStore) and how one is opened (BackupStoreFactory);
BackupReader: what a listing reads of one (every BackupStore is one)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from snapgroup.domain.backup_manifest import BackupManifest, DamagedBackup, Partial


class BackupReader(Protocol):
    """A repository listed (adapters/backup_scan.py: `snapgroup backups` reads with it
    alone, without what writes or checks files)."""

    @property
    def root(self) -> str: ...

    def scan(self, vm_uuid: str | None = None) -> tuple[list[BackupManifest], list[DamagedBackup]]:
        """Complete backups, oldest first, and the backup directories whose manifest is
        unreadable or gone."""
        ...

    def exists(self, path: str) -> bool: ...


class BackupStore(Protocol):
    """A backup repository (adapters/backup_repo.py): manifests and files under one
    directory, a backup listed only once complete. Raises SnapgroupError subclasses."""

    root: str

    def file(self, manifest: BackupManifest, volume_uuid: str) -> str: ...

    def member_file(self, vm_uuid: str, backup_id: str, volume_uuid: str) -> str:
        """A disk's file in backup `backup_id` of the VM: a member of another backup's
        chain, or a backup whose manifest is set aside (file() needs the manifest)."""
        ...

    def backups(self, vm_uuid: str | None = None) -> list[BackupManifest]:
        """Complete backups with a readable manifest, oldest first."""
        ...

    def scan(self, vm_uuid: str | None = None) -> tuple[list[BackupManifest], list[DamagedBackup]]:
        """backups(), and the backup directories whose manifest is unreadable or gone."""
        ...

    def get(self, backup_id: str, *, vm_uuid: str | None = None) -> BackupManifest: ...

    def begin(self, vm_uuid: str, backup_id: str) -> Partial: ...

    def publish(self, partial: Partial, manifest: BackupManifest) -> None: ...

    def discard(self, partial: Partial) -> None: ...

    def partial(self, vm_uuid: str, backup_id: str) -> Partial: ...

    def partials(self, vm_uuid: str) -> list[str]: ...

    def discard_partials(self, vm_uuid: str) -> list[str]: ...

    def rewrite_manifest(self, manifest: BackupManifest) -> None: ...

    def hide_for_prune(self, manifest: BackupManifest, plan: Mapping[str, object]) -> None: ...

    def pending_prunes(self, vm_uuid: str) -> list[tuple[BackupManifest, dict[str, object]]]: ...

    def hold(self, manifest: BackupManifest, holder: str, files: Sequence[str]) -> None:
        """Record that `files` (disks restored with --keep-chain) read this backup's."""
        ...

    def holds(self, manifest: BackupManifest) -> dict[str, list[str]]:
        """holder -> the files it recorded (mounts' holds apart)."""
        ...

    def hold_mount(self, manifest: BackupManifest, holder: str, mount: dict[str, str]) -> None:
        """Record that a `snapgroup mount` (`mount`: its mountpoint and host) reads this
        backup's files; release() drops it."""
        ...

    def mounts(self, manifest: BackupManifest) -> dict[str, dict[str, str]]:
        """holder -> the mount (mountpoint, host) that holds this backup."""
        ...

    def open_to_qemu(self, files: Sequence[str]) -> None:
        """Let the user libvirt runs QEMU as read these repository files (the chain of
        disks restored thin as a VM): search on the directories on their way, read on
        them, no one else let in. OperationError naming a file it still cannot read (a
        read-only repository cannot be changed)."""
        ...

    def release(self, manifest: BackupManifest, holder: str) -> None: ...

    def move_file(self, src: str, dst: str) -> None: ...

    def remove_backup_dir(self, vm_uuid: str, backup_id: str) -> None: ...

    def file_problem(self, path: str, sha256: str, piece_size: int | None) -> str | None:
        """Why a file is not what its manifest says (missing, unreadable, another
        SHA-256 over pieces of `piece_size`, None: of the whole file); None when it is."""
        ...

    def sha256(self, path: str) -> str:
        """The file's checksum over pieces of backup_manifest.PIECE_SIZE."""
        ...

    def seal(self, path: str) -> str:
        """Make a file just written durable (fsync) and return its checksum (as sha256)."""
        ...

    def size(self, path: str) -> int: ...

    def exists(self, path: str) -> bool: ...


BackupStoreFactory = Callable[[str], BackupStore]  # a repository's directory -> its store
