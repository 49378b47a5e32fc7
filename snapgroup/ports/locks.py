"""A VM's locks (VmLocks), on this host or across the hosts of a store."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol


class VmLocks(Protocol):
    """A VM's locks: one operation on a VM at a time, and one prune or restore of its
    backups. infra/locks.py: flock(2) on this host (SQLite); store/locks.py: PostgreSQL
    advisory locks, across every host of the store. Either is released when its holder
    dies. Busy (SYS.1011) when the lock stays taken past `wait` seconds (0: at once)."""

    def vm(self, vm_uuid: str, *, wait: float = 0.0) -> AbstractContextManager[None]: ...

    def backups(self, vm_uuid: str, *, wait: float = 0.0) -> AbstractContextManager[None]:
        """A prune (rewrites backups) against a restore (reads them); taken after vm()
        when both are."""
        ...

    def try_vm(self, vm_uuid: str) -> AbstractContextManager[bool]:
        """The VM's lock for the block when it is free (True), else False at once."""
        ...
