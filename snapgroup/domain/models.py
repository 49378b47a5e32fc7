"""Plain value types that cross the ports (hypervisor, image tool) and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from snapgroup.domain.errors import InvalidArgument


class VmState(StrEnum):
    RUNNING = "Running"
    PAUSED = "Paused"
    STOPPED = "Stopped"
    OTHER = "Other"  # crashed, shutting down, pmsuspended...: no operation is safe

    @property
    def is_live(self) -> bool:
        """A QEMU process owns the disks: changes go through libvirt block jobs."""
        return self in (VmState.RUNNING, VmState.PAUSED)


# Seconds a guest is given to shut down when asked to (revert --stop), then powered off.
DEFAULT_STOP_TIMEOUT = 60.0


class VolumeType(StrEnum):
    ROOT = "Root"
    DATA = "Data"


@dataclass(frozen=True)
class DomainDisk:
    """One <disk> of a domain, as libvirt describes it."""

    target: str  # vda, sdb...
    device: str  # disk, cdrom, floppy, lun
    source_type: str  # file, block, network, volume
    path: str | None  # the top file (None for network/empty)
    format: str | None  # driver type: qcow2, raw...
    readonly: bool = False
    shareable: bool = False
    boot_order: int | None = None
    serial: str | None = None
    # Backing files below `path`, top first, when libvirt reports them (live XML).
    backing: tuple[str, ...] = ()


@dataclass(frozen=True)
class DomainInfo:
    uuid: str  # 32 lowercase hex digits (ZStack style; libvirt's dashes removed)
    name: str
    state: VmState
    disks: tuple[DomainDisk, ...]
    persistent: bool = True


@dataclass(frozen=True)
class DiskOverlay:
    """A new top file for one disk: `overlay` backed by the disk's current top."""

    target: str
    current: str
    overlay: str


@dataclass(frozen=True)
class ImageInfo:
    """One layer of `qemu-img info --backing-chain`."""

    path: str
    format: str
    virtual_size: int
    actual_size: int
    backing: str | None  # absolute path of the backing file, None at the base
    backing_format: str | None = None
    cluster_size: int = 65536  # qcow2's default; what a merge's metadata margin is sized by


@dataclass(frozen=True)
class FileDigest:
    """A file's size and SHA-256 (hex): what a memory group records of its memory file."""

    size: int
    sha256: str


@dataclass(frozen=True)
class BlockJobProgress:
    cur: int
    end: int


@dataclass(frozen=True)
class FreezeResult:
    frozen: tuple[str, ...] = field(default_factory=tuple)  # mountpoints, when known
    count: int = 0


class VolumeRecord(Protocol):
    """What the planner reads and moves of a recorded volume (a store's VolumeRow)."""

    uuid: str
    install_path: str
    parent_snapshot_uuid: str | None


class SnapshotRecord(Protocol):
    """What the planner reads and moves of a recorded snapshot (a store's SnapshotRow)."""

    uuid: str
    install_path: str
    parent_uuid: str | None
    create_date: datetime


class ChainSnapshot(Protocol):
    """What a chain check reads of a recorded snapshot: a SnapshotRow, or a link of
    Repo.chains (a result row read by column name)."""

    @property
    def uuid(self) -> str: ...
    @property
    def install_path(self) -> str: ...
    @property
    def parent_uuid(self) -> str | None: ...


class DeleteMode(StrEnum):
    PERMISSIVE = "Permissive"
    ENFORCING = "Enforcing"

    @classmethod
    def parse(cls, value: str | DeleteMode) -> DeleteMode:
        for mode in cls:
            if value == mode or str(value).lower() == mode.value.lower():
                return mode
        raise InvalidArgument(f"deleteMode {value!r} is not Permissive or Enforcing")
