"""Per-VM operation locks on one host: flock(2) on a file named by the VM's UUID. The
kernel drops a flock when its process dies, so a lock can never outlive its holder: no
manual unlock. A store on PostgreSQL holds them in the database instead (store/locks.py),
so that they span hosts; FileLocks is the ports.VmLocks of a SQLite store."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from snapgroup.domain.errors import Busy
from snapgroup.domain.validate import parse_uuid

DEFAULT_LOCK_DIR = Path("/run/snapgroup/locks")
POLL_SECONDS = 0.05


def lock_dir() -> Path:
    return Path(os.environ.get("SNAPGROUP_LOCK_DIR") or DEFAULT_LOCK_DIR)


def _open(vm_uuid: str, prefix: str = "") -> int:
    directory = lock_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"{prefix}{parse_uuid(vm_uuid)}.lock"
    return os.open(directory / name, os.O_RDWR | os.O_CREAT, 0o600)


@contextmanager
def vm_lock(vm_uuid: str, *, wait: float = 0.0) -> Iterator[None]:
    """Hold the VM's lock for the block. `wait` seconds at most (0: fail fast)."""
    with _held(_open(vm_uuid), f"another snapgroup operation on VM {vm_uuid}", wait):
        yield


@contextmanager
def backups_lock(vm_uuid: str, *, wait: float = 0.0) -> Iterator[None]:
    """Hold the lock of the VM's backups in repositories: a prune (which rewrites them)
    against a restore (which reads them). Apart from vm_lock: a restore reads no file of
    the VM's own, and must not stop its groups being taken meanwhile. Taken after
    vm_lock when both are."""
    what = f"a prune or restore of VM {vm_uuid}'s backups"
    with _held(_open(vm_uuid, "backups-"), what, wait):
        yield


@contextmanager
def _held(fd: int, what: str, wait: float) -> Iterator[None]:
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Busy.waited(what, wait) from None
                time.sleep(POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def try_vm_lock(vm_uuid: str) -> int | None:
    """The lock's fd when it was free (caller closes it), None when held elsewhere."""
    fd = _open(vm_uuid)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class FileLocks:
    """ports.VmLocks on this host's lock directory."""

    def vm(self, vm_uuid: str, *, wait: float = 0.0) -> AbstractContextManager[None]:
        return vm_lock(vm_uuid, wait=wait)

    def backups(self, vm_uuid: str, *, wait: float = 0.0) -> AbstractContextManager[None]:
        return backups_lock(vm_uuid, wait=wait)

    @contextmanager
    def try_vm(self, vm_uuid: str) -> Iterator[bool]:
        fd = try_vm_lock(vm_uuid)
        try:
            yield fd is not None
        finally:
            if fd is not None:
                os.close(fd)
