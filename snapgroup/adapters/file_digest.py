"""A file's size and SHA-256 (a memory group's saved state), remembered per process
for as long as the file's identity and times say it has not changed: `check` asks
for it on every call, and a memory file is as large as the guest's memory."""

from __future__ import annotations

import hashlib
import os
import stat
import threading

from snapgroup.domain.errors import ImageToolError
from snapgroup.domain.models import FileDigest

_CHUNK = 1 << 20
_MAX_REMEMBERED = 256
# (path) -> ((device, inode, size, mtime_ns, ctime_ns), digest). ctime cannot be set
# from user space: any write or truncate after the digest changes it.
_seen: dict[str, tuple[tuple[int, int, int, int, int], FileDigest]] = {}
_lock = threading.Lock()


def digest(path: str) -> FileDigest:
    """ImageToolError when the file cannot be read."""
    try:
        # O_NONBLOCK: a FIFO put in the file's place would block the open until a
        # writer came; a device (a link to /dev/zero) would be read forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ImageToolError(f"cannot read {path}: not a regular file")
            before = _identity(st)
            with _lock:
                known = _seen.get(path)
            if known is not None and known[0] == before:
                return known[1]
            sha = hashlib.sha256()
            size = 0
            while chunk := f.read(_CHUNK):
                sha.update(chunk)
                size += len(chunk)
            after = _identity(os.fstat(f.fileno()))
    except OSError as exc:
        raise ImageToolError(f"cannot read {path}: {exc.strerror}") from exc
    made = FileDigest(size, sha.hexdigest())
    if after == before:  # not written while it was read
        with _lock:
            if len(_seen) >= _MAX_REMEMBERED:
                _seen.clear()
            _seen[path] = (after, made)
    return made


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
