"""Leaked clusters: qcow2 space a writer counted as used but never linked into the
image, left when the writer dies mid-write (a `qemu-img commit` or safe rebase killed
with its snapgroup). Harmless to data, but `qemu-img check` reports the file (exit 3)
and the space is lost until `qemu-img check -r leaks` frees it. That repair rewrites
the refcounts: it is run only on a file no running VM has in its chain (QEMU's own lock
refuses the rest too), never on one QEMU reads or writes.

Recovery frees the leaks of the files the interrupted operation's journal says it was
writing (ops/journal.written_files); verify reports any file's as a warning, and
`verify --repair` frees them once no running VM holds the file."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from snapgroup.domain.backup_manifest import ImageCheck
from snapgroup.domain.errors import NotFound, SnapgroupError
from snapgroup.domain.models import VmState
from snapgroup.ops.context import OpContext

log = logging.getLogger(__name__)
_CHECKS_AT_ONCE = 4


@dataclass(frozen=True)
class Leak:
    """A file that had leaked clusters, and what became of them."""

    path: str
    clusters: int
    freed: bool
    held_by: str | None = None  # not freed: the running VM whose chain holds the file
    error: str | None = None  # not freed: why the repair failed

    def describe(self) -> str:
        what = f"{self.clusters} leaked cluster{'s' if self.clusters != 1 else ''}"
        if self.freed:
            return f"{self.path}: {what} freed"
        if self.held_by is not None:
            why = f"in use by running VM {self.held_by}: freed once it is stopped"
        else:
            why = self.error or "`verify --repair` frees them"
        return f"{self.path}: {what} left ({why})"


class InUse:
    """Which files the chains of the host's running domains hold, read once when first
    asked: path -> (the VM's name, whether it is the file QEMU writes: a disk's top)."""

    def __init__(self, ctx: OpContext) -> None:
        self.ctx = ctx
        self._files: dict[str, tuple[str, bool]] | None = None

    def holder(self, path: str) -> str | None:
        """The name of a running VM whose chain holds `path`; None: no running VM's."""
        return self._held().get(path, (None, False))[0]

    def written(self, path: str) -> bool:
        """Does a running QEMU write `path` (a disk's top)? Its qcow2 metadata changes
        under a reader: no check of it means anything."""
        return self._held().get(path, (None, False))[1]

    def _held(self) -> dict[str, tuple[str, bool]]:
        if self._files is None:
            self._files = self._read()
        return self._files

    def _read(self) -> dict[str, tuple[str, bool]]:
        held: dict[str, tuple[str, bool]] = {}
        for vm_uuid, name in self.ctx.hv.list_vms():
            try:
                domain = self.ctx.hv.lookup(vm_uuid)
            except NotFound:
                continue  # gone since the listing
            if domain.state is VmState.STOPPED:
                continue  # any other state may have a QEMU holding the files
            for disk in domain.disks:
                if disk.path is None:
                    continue
                try:
                    layers = self.ctx.images.chain(disk.path, shared=True)
                except SnapgroupError:
                    layers = []  # its top alone is known held
                held.update((layer.path, (name, False)) for layer in layers[1:])
                held[disk.path] = (name, True)
        return held


def free(ctx: OpContext, path: str, clusters: int, in_use: InUse) -> Leak:
    """Free the `clusters` leaked in `path` unless a running VM's chain holds it."""
    holder = in_use.holder(path)
    if holder is not None:
        return Leak(path, clusters, False, held_by=holder)
    try:
        left = ctx.images.repair_leaks(path)
    except SnapgroupError as exc:
        return Leak(path, clusters, False, error=f"the repair failed: {exc.details}")
    if left.leaks:
        return Leak(path, clusters, False, error=f"{left.leaks} still leaked after the repair")
    return Leak(path, clusters, True)


def free_written(ctx: OpContext, paths: Iterable[str], *, settled: bool) -> list[Leak]:
    """Check each file an interrupted writer was writing (those still there) and free
    its leaks where that is safe; the files that had leaks. Before the operation is
    finished (`settled` False) a running VM's block job may still be writing any file
    of its chain: those are left for the pass after."""
    in_use = InUse(ctx)
    leaks = []
    for path in paths:
        if not ctx.images.exists(path) or in_use.written(path):
            continue  # merged away and removed since; or QEMU writes it
        if not settled and in_use.holder(path) is not None:
            continue
        try:
            found = ctx.images.check(path, shared=True)
        except SnapgroupError as exc:
            log.warning("cannot check %s for leaked clusters: %s", path, exc.details)
            continue
        if found.leaks:
            leak = free(ctx, path, found.leaks, in_use)
            log.log(logging.INFO if leak.freed else logging.WARNING, "%s", leak.describe())
            leaks.append(leak)
    return leaks


@dataclass(frozen=True)
class ImageFinding:
    """What `qemu-img check` said of a file (verify makes a difference of it)."""

    path: str
    kind: str  # image-corrupt (an error), image-leaks (a warning)
    detail: str
    repaired: bool = False

    @property
    def severity(self) -> str:
        return "warning" if self.kind == "image-leaks" else "error"


def image_findings(
    ctx: OpContext, paths: Iterable[str], in_use: InUse, checked: set[str], *, repair: bool
) -> list[ImageFinding]:
    """`qemu-img check` of each file there not `checked` yet (-U: a running VM may read
    it), but a running VM's tops, which QEMU writes as it is checked: corruption is an
    error, leaked clusters a warning, freed with `repair` where no running VM holds them.
    The checks run a few at a time (a process each: ~10-15 ms a file here)."""
    todo = [p for p in paths if p not in checked and ctx.images.exists(p) and not in_use.written(p)]
    checked.update(todo)
    with ThreadPoolExecutor(_CHECKS_AT_ONCE, thread_name_prefix="snapgroup-check") as pool:
        results = list(pool.map(lambda path: _check_or_none(ctx, path), todo))
    found = []
    for path, result in zip(todo, results, strict=True):
        if result is None:
            continue  # not a qcow2 file qemu-img reads: the chain checks tell
        if result.corruptions or result.check_errors:
            what = f"{result.corruptions} corruption(s), {result.check_errors} check error(s)"
            found.append(ImageFinding(path, "image-corrupt", f"{path}: qemu-img check: {what}"))
        elif result.leaks:
            if repair:
                leak = free(ctx, path, result.leaks, in_use)
            else:
                leak = Leak(path, result.leaks, False, held_by=in_use.holder(path))
            detail = f"{leak.describe()}; space only, the data is intact"
            found.append(ImageFinding(path, "image-leaks", detail, repaired=leak.freed))
    return found


def _check_or_none(ctx: OpContext, path: str) -> ImageCheck | None:
    try:
        return ctx.images.check(path, shared=True)
    except SnapgroupError:
        return None
