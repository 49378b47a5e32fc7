"""Room for an instant recovery's copy: each block pull writes everything its disk's
backing chain holds into the disk's own overlay, on the overlay's filesystem. Checked
before the VM is made (restore --instant) or its copy journaled, and again before each
pull: a pull that runs the filesystem dry fails halfway in QEMU, and a guest writing
there is paused by QEMU on ENOSPC."""

from __future__ import annotations

import os
from collections.abc import Iterable

from snapgroup.domain.errors import OperationError
from snapgroup.domain.models import ImageInfo
from snapgroup.domain.planner import merge_room
from snapgroup.ops.context import OpContext


def pull_room(chain: list[ImageInfo]) -> int:
    """Bytes pulling `chain`'s backing files into its top may take: their data (at most
    the disk's virtual size) in whole clusters, with the qcow2 metadata mapping it."""
    top, below = chain[0], chain[1:]
    data = min(sum(layer.actual_size for layer in below), top.virtual_size)
    return merge_room(data, top) if below else 0


def check_pull_room(ctx: OpContext, paths: Iterable[str], *, live: bool) -> None:
    """OperationError, with the figures, unless the pulls of every disk in `paths` fit
    together in the free space of their filesystems."""
    demand: dict[int, tuple[str, int, int]] = {}  # filesystem -> (directory, disks, bytes)
    for path in paths:
        room = pull_room(ctx.images.chain(path, shared=live))
        if room:
            directory = os.path.dirname(path)
            fs = ctx.images.filesystem(directory)
            _, disks, total = demand.get(fs, (directory, 0, 0))
            demand[fs] = (directory, disks + 1, total + room)
    for directory, disks, total in demand.values():
        free = ctx.images.free_bytes(directory)
        if total > free:
            raise OperationError(
                f"copying {disks} disk(s) local needs {total >> 20} MiB on the filesystem "
                f"of {directory} (data and qcow2 metadata), {free >> 20} MiB free"
            )
