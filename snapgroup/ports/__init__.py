"""The engine's ports. Adapters implement them; tests pass fakes (snapgroup.testing.fakes).

Each family in a module of its own, every name importable from here: tools.py (libvirt's
Hypervisor and qemu-img's ImageTool; ProgressFn), backups.py (BackupStore,
BackupStoreFactory, BackupReader), locks.py (VmLocks), guest_files.py (GuestFiles, GuestSession).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from snapgroup.ports.backups import BackupReader, BackupStore, BackupStoreFactory
from snapgroup.ports.guest_files import GuestFiles, GuestSession
from snapgroup.ports.locks import VmLocks
from snapgroup.ports.tools import Hypervisor, ImageTool, ProgressFn

Clock = Callable[[], datetime]  # now, timezone-aware (tests pass a fixed one)

__all__ = [
    "BackupReader",
    "BackupStore",
    "BackupStoreFactory",
    "Clock",
    "GuestFiles",
    "GuestSession",
    "Hypervisor",
    "ImageTool",
    "ProgressFn",
    "VmLocks",
]
