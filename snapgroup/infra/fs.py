"""Filesystem usage (statvfs), for the policies' space guard."""

from __future__ import annotations

import os

from snapgroup.domain.errors import OperationError


def usage(directory: str) -> tuple[int, int]:
    """(bytes an unprivileged writer may still allocate, the filesystem's size)."""
    try:
        st = os.statvfs(directory)
    except OSError as exc:
        raise OperationError(f"cannot stat the filesystem of {directory}: {exc.strerror}") from exc
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
