"""A file removed at once, its blocks released in the background: freeing a large
file's written blocks is slow (on ext4 mounted with discard here: 0.8-2.5 s per 2 GiB,
all of it inside unlink), and no caller needs to wait for it. ImageTool.remove (the
QemuImg adapter's) is this; it was qemu_img.py's until that module passed 400 lines."""

from __future__ import annotations

import os
import threading

from snapgroup.domain.errors import ImageToolError


def remove(path: str) -> None:
    """The name goes now; the blocks are released by a background thread: an fd held
    across the unlink moves that work to its close(). If the process dies first, the
    kernel closes the fd and frees the blocks just the same: nothing leaks."""
    try:
        # O_PATH: no read permission or data access needed, only the reference.
        fd: int | None = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        fd = None  # missing (fine) or not openable: the unlink below tells
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        raise ImageToolError(f"cannot remove {path}: {exc.strerror}") from exc
    if fd is not None:
        _release(fd)


_releasing: set[threading.Thread] = set()
_releasing_lock = threading.Lock()


def _release(fd: int) -> None:
    """Close `fd` (the last reference to an unlinked file) in a daemon thread: an exit
    does not wait for it, the kernel then frees the blocks at the process's end."""

    def close() -> None:
        try:
            os.close(fd)
        finally:
            with _releasing_lock:
                _releasing.discard(threading.current_thread())

    thread = threading.Thread(target=close, name="snapgroup-release", daemon=True)
    with _releasing_lock:
        _releasing.add(thread)
    thread.start()


def wait_released() -> None:
    """Until every release begun so far is done."""
    with _releasing_lock:
        pending = list(_releasing)
    for thread in pending:
        thread.join()
