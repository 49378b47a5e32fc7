"""A VM's locks held in PostgreSQL (ports.VmLocks), so that they span every host of the
store: two hosts that both see a VM (shared storage, a migration in flight) never
operate on it at once.

Session-level advisory locks (`pg_try_advisory_lock`), each on a connection of its own
held for the block (Database.lock_connection). Closing the connection ends the session
and the server releases the lock; so does the death of the holder's process (its socket
closes) or host (TCP keepalives, ~25 s). No lease: nothing to renew, no clock to trust,
no heartbeat thread, no lock row left behind by a crash. The key is 64 bits of a hash of
the lock's kind and the VM's UUID; advisory locks are per database, so stores on one
server never meet.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from snapgroup.domain.errors import Busy, StoreError
from snapgroup.domain.validate import parse_uuid
from snapgroup.store.db import Database

POLL_SECONDS = 0.05
_TRY = text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK_ALL = text("SELECT pg_advisory_unlock_all()")


def lock_key(kind: str, vm_uuid: str) -> int:
    """The advisory lock's bigint: `kind` (vm, backups) and the VM's UUID, hashed."""
    digest = hashlib.sha256(f"snapgroup:{kind}:{parse_uuid(vm_uuid)}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLocks:
    """ports.VmLocks on a PostgreSQL store."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def vm(self, vm_uuid: str, *, wait: float = 0.0) -> Iterator[None]:
        with self._held("vm", vm_uuid, f"another snapgroup operation on VM {vm_uuid}", wait):
            yield

    @contextmanager
    def backups(self, vm_uuid: str, *, wait: float = 0.0) -> Iterator[None]:
        what = f"a prune or restore of VM {vm_uuid}'s backups"
        with self._held("backups", vm_uuid, what, wait):
            yield

    @contextmanager
    def try_vm(self, vm_uuid: str) -> Iterator[bool]:
        key = lock_key("vm", vm_uuid)
        conn = self.db.lock_connection()
        try:
            yield _try(conn, key)
        finally:
            _release(conn)

    @contextmanager
    def _held(self, kind: str, vm_uuid: str, what: str, wait: float) -> Iterator[None]:
        key = lock_key(kind, vm_uuid)
        conn = self.db.lock_connection()
        try:
            deadline = time.monotonic() + wait
            while not _try(conn, key):
                if time.monotonic() >= deadline:
                    raise Busy.waited(what, wait)
                time.sleep(POLL_SECONDS)
            yield
        finally:
            _release(conn)


def _release(conn: Connection) -> None:
    """Unlocked, then closed. The unlock is answered once done; a close alone ends the
    session a moment later, on the server's time: a lock taken at once after it (the
    next operation, in this process or on another host) could find it still held."""
    try:
        conn.execute(_UNLOCK_ALL)
    except SQLAlchemyError:
        pass  # the connection is gone: so is its session, and the lock with it
    finally:
        conn.close()


def _try(conn: Connection, key: int) -> bool:
    try:
        return bool(conn.execute(_TRY, {"key": key}).scalar_one())
    except SQLAlchemyError as exc:
        raise StoreError(f"metadata store error taking a VM lock: {exc}") from exc
