"""A VM's locks held in PostgreSQL (ports.VmLocks), so that they span every host of the
store: two hosts that both see a VM (shared storage, a migration in flight) never
operate on it at once.

Session-level advisory locks (`pg_try_advisory_lock`), each on a connection of its own
held for the block (Database.lock_connection). The death of the holder's process (its
socket closes) or host (TCP keepalives, ~25 s) ends the session, and the server releases
its locks. No lease: nothing to renew, no clock to trust, no heartbeat thread, no lock
row left behind by a crash. The key is 64 bits of a hash of the lock's kind and the VM's
UUID; advisory locks are per database, so stores on one server never meet.

A block's end unlocks everything its session holds (`pg_advisory_unlock_all`, answered
once done) and keeps the connection, idle and holding nothing, for the next block (at
most IDLE_KEPT of them): a new PostgreSQL session per lock cost a connection's set-up
each time (bench/pg_locks.py). A kept connection the server dropped meanwhile (a
restart) is replaced by a new one at its next use.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from snapgroup.domain.errors import Busy, StoreError
from snapgroup.domain.validate import parse_uuid
from snapgroup.store.db import Database

POLL_SECONDS = 0.05
IDLE_KEPT = 4  # idle lock connections kept for the next blocks (each a server session)
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
        self._idle: list[Connection] = []  # connections holding no lock, to be reused
        self._idle_lock = threading.Lock()

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
        conn, free = self._first_try(key)
        try:
            yield free
        finally:
            self._release(conn)

    @contextmanager
    def _held(self, kind: str, vm_uuid: str, what: str, wait: float) -> Iterator[None]:
        key = lock_key(kind, vm_uuid)
        conn, taken = self._first_try(key)
        try:
            deadline = time.monotonic() + wait
            while not taken:
                if time.monotonic() >= deadline:
                    raise Busy.waited(what, wait)
                time.sleep(POLL_SECONDS)
                taken = _try(conn, key)
            yield
        finally:
            self._release(conn)

    def _first_try(self, key: int) -> tuple[Connection, bool]:
        """A connection (a kept one when there is one) and its first try of `key`. A
        kept connection the server dropped is closed and a new one tried."""
        with self._idle_lock:
            kept = self._idle.pop() if self._idle else None
        if kept is not None:
            try:
                return kept, bool(kept.execute(_TRY, {"key": key}).scalar_one())
            except SQLAlchemyError:
                _close(kept)  # dropped while idle (a server restart): a new session
        conn = self.db.lock_connection()
        try:
            return conn, _try(conn, key)
        except StoreError:
            _close(conn)
            raise

    def _release(self, conn: Connection) -> None:
        """Unlocked, then kept for the next block (or closed when enough are kept). The
        unlock is answered once done: a lock taken at once after it (the next
        operation, in this process or on another host) finds it free. A connection whose
        unlock fails is closed: its session is gone, and its locks with it."""
        try:
            conn.execute(_UNLOCK_ALL)
        except SQLAlchemyError:
            _close(conn)
            return
        with self._idle_lock:
            if len(self._idle) < IDLE_KEPT:
                self._idle.append(conn)
                return
        _close(conn)

    def close(self) -> None:
        """Closes the kept connections (their sessions end; they hold no lock)."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)


def _close(conn: Connection) -> None:
    with suppress(SQLAlchemyError):  # gone already
        conn.close()


def _try(conn: Connection, key: int) -> bool:
    try:
        return bool(conn.execute(_TRY, {"key": key}).scalar_one())
    except SQLAlchemyError as exc:
        raise StoreError(f"metadata store error taking a VM lock: {exc}") from exc
