"""This host's `snapgroup mount`s while they live: one record a mount,
`<lock dir>/mounts/<holder>.json` (what it reads and where it is mounted), locked with
flock(2) by the process that serves the mount (guestmount inherits the descriptor and
keeps it until it exits). The kernel drops the lock when that process dies, however it
dies: a record nobody locks is a mount that is gone (stale), whatever the file says.
Under the lock directory (/run: a host restart, which ends every mount, empties it)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapgroup.domain.validate import parse_uuid
from snapgroup.infra.locks import lock_dir


@dataclass(frozen=True)
class MountRecord:
    holder: str  # a UUID: the record's name, and the holder of its backups' holds
    doc: dict[str, Any]  # mountpoint; group or repository and backups
    alive: bool  # its serving process still runs

    @property
    def mountpoint(self) -> str:
        return str(self.doc.get("mountpoint", ""))


def _directory() -> Path:
    return lock_dir() / "mounts"


def _path(holder: str) -> Path:
    return _directory() / f"{parse_uuid(holder, 'mount holder')}.json"


def record(holder: str, doc: dict[str, Any]) -> int:
    """Write the record and lock it: the descriptor returned holds the lock (hand it to
    the serving process, then close it here)."""
    directory = _directory()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(_path(holder), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps(doc).encode())
    except BaseException:
        os.close(fd)
        forget(holder)
        raise
    return fd


@contextmanager
def recorded(holder: str, doc: dict[str, Any]) -> Iterator[int]:
    """record() for the block, which hands the descriptor on; ours is closed after it,
    and the record forgotten when the block fails (its mount never began)."""
    fd = record(holder, doc)
    try:
        yield fd
    except BaseException:
        forget(holder)
        raise
    finally:
        os.close(fd)


def records() -> list[MountRecord]:
    """Every record, each with whether its mount still lives."""
    found = []
    for path in sorted(_directory().glob("*.json")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # forgotten meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                alive = False
            except BlockingIOError:
                alive = True
            raw = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}  # cut short as it was written: its mount never began
        found.append(MountRecord(path.stem, doc if isinstance(doc, dict) else {}, alive))
    return found


def forget(holder: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(_path(holder))
