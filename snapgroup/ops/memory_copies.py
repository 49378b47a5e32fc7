"""A memory group's saved state resumed as ANOTHER domain: a clone of the group
(`clone --start`) or a VM restored from the group's backup (`restore --as NEW --start`),
and the state carried by a backup (export, verify-backup, restore).

libvirt 9.0 refuses to start a domain from a save image whose embedded XML names
another domain, so the new domain gets its own copy of the state, whose header carries
ITS definition (Hypervisor.adopt_memory_state: name, UUID, MAC addresses, disks as it
is defined), written beside the source (`<uuid>.mem`, 0600) and removed once the
domain runs from it: the copy is only the way in. The guest itself resumes with what
its memory holds: its NIC's old MAC (until the NIC is reset), its addresses, hostname
and open connections. A copy resumed beside a running original therefore duplicates
it on the network: README's Memory groups says so.

Journal kind `resume-state` (steps: begin -> copied -> restoring): recovery waits for a
restore libvirtd may still be running, then removes the copy; the domain is left
running (resumed) or stopped (defined, not resumed: `start` boots it cold).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from snapgroup.domain.backup_manifest import MEMORY_FILE, BackupManifest
from snapgroup.domain.errors import OperationError, SnapgroupError
from snapgroup.domain.models import DomainInfo
from snapgroup.ops.context import OpContext
from snapgroup.ops.journal import DONE, ROLLED_BACK
from snapgroup.ops.memory_state import MEMORY_MARGIN, SUFFIX, after_resume, settled_domain
from snapgroup.ops.recovery import recovers
from snapgroup.ports import BackupStore
from snapgroup.store.tables import GroupRow

KIND = "resume-state"
_T = TypeVar("_T")


def copy_path(ctx: OpContext, directory: str, size: int) -> str:
    """Where a copy of a saved state of `size` bytes goes in `directory`, once it is
    known to fit there (OperationError, nothing made, when it does not)."""
    free = ctx.images.free_bytes(directory)
    if free < size + MEMORY_MARGIN:
        raise OperationError(
            f"the saved memory state ({size >> 20} MiB) does not fit on the filesystem "
            f"of {directory} ({free >> 20} MiB free) to be resumed from: nothing was done"
        )
    return os.path.join(directory, f"{ctx.new_uuid()}{SUFFIX}")


def begin_copy(ctx: OpContext, vm_uuid: str, source: str, copy: str) -> str:
    """The saved state in `source` copied to `copy` as the stopped domain vm_uuid's
    (journaled: a killed process leaves no copy behind). The journal's operation, for
    resume_copy."""
    op = ctx.journal.begin(KIND, vm_uuid, {"copy": copy})
    try:
        ctx.hv.adopt_memory_state(vm_uuid, source, into=copy)
    except SnapgroupError as exc:
        ctx.remove_files([copy])
        ctx.journal.close(op, ROLLED_BACK, detail=f"the saved state was not copied: {exc.details}")
        raise
    ctx.journal.step(op, KIND, "copied")
    return op


def unpack_for(
    ctx: OpContext, store: BackupStore, manifest: BackupManifest, vm_uuid: str, directory: str
) -> tuple[str, str] | None:
    """restore --as NEW --start of a memory group's backup: its saved state unpacked
    beside the restored VM's disks as that VM's (None: the backup has none)."""
    if manifest.memory is None:
        return None
    return _not_resumed(
        ctx, vm_uuid, lambda: unpack_backup_state(ctx, store, manifest, vm_uuid, directory)
    )


def resume_unpacked(
    ctx: OpContext, resuming: tuple[str, str], vm_uuid: str, sources: Mapping[str, str]
) -> str | None:
    """The restored VM started from its unpacked state (unpack_for's)."""
    op, copy = resuming
    return _not_resumed(ctx, vm_uuid, lambda: resume_copy(ctx, op, copy, vm_uuid, dict(sources)))


def _not_resumed(ctx: OpContext, vm_uuid: str, step: Callable[[], _T]) -> _T:
    try:
        return step()
    except SnapgroupError as exc:
        raise OperationError(
            f"VM {vm_uuid} was restored but not resumed from the backup's memory state "
            f"({exc.details}): `virsh start` boots it, or undefine it",
            cause=exc,
        ) from exc


def unpack_backup_state(
    ctx: OpContext, store: BackupStore, manifest: BackupManifest, vm_uuid: str, directory: str
) -> tuple[str, str]:
    """The backup's saved state unpacked beside the restored VM's disks and made its
    (journaled as begin_copy). The journal's operation and the copy, for resume_copy."""
    memory = manifest.memory
    assert memory is not None
    copy = copy_path(ctx, directory, memory.size)
    op = ctx.journal.begin(KIND, vm_uuid, {"copy": copy})
    backup_dir = os.path.dirname(store.file(manifest, manifest.disks[0].volume_uuid))
    try:
        ctx.images.unpack_memory(os.path.join(backup_dir, MEMORY_FILE), copy, size=memory.size)
        digest = ctx.images.digest(copy)
        if digest.sha256 != memory.state_sha256 or digest.size != memory.size:
            raise OperationError(
                f"backup {manifest.backup_id}: its memory state unpacked is not the one "
                f"saved (sha256 {digest.sha256[:16]}..., recorded {memory.state_sha256[:16]}...)"
            )
        ctx.hv.adopt_memory_state(vm_uuid, copy, into=None)
    except SnapgroupError as exc:
        ctx.remove_files([copy])
        ctx.journal.close(op, ROLLED_BACK, detail=f"the saved state was not copied: {exc.details}")
        raise
    ctx.journal.step(op, KIND, "copied")
    return op, copy


def resume_copy(
    ctx: OpContext,
    op: str,
    copy: str,
    vm_uuid: str,
    sources: dict[str, str],
    *,
    paused: bool = False,
) -> str | None:
    """The stopped domain started from its copy (begin_copy's), each target on the file
    in `sources`; the copy removed whatever happens, its guest clock set. A note when
    the clock could not be set; the restore's error when it did not resume."""
    ctx.journal.step(op, KIND, "restoring")
    try:
        ctx.hv.restore_memory(vm_uuid, copy, sources, paused=paused)
    except SnapgroupError as exc:
        ctx.remove_files([copy])
        ctx.journal.close(op, ROLLED_BACK, detail=f"not resumed: {exc.details}")
        raise
    ctx.remove_files([copy])
    ctx.journal.close(op, DONE, detail="resumed from the saved state")
    return after_resume(ctx, vm_uuid, {"paused": paused})


def group_copy(ctx: OpContext, group: GroupRow) -> str:
    """Where a copy of a memory group's saved state goes: beside it (the same
    filesystem, where copy_file_range may share the blocks), once it fits there."""
    assert group.memory_file is not None and group.memory_size is not None
    return copy_path(ctx, os.path.dirname(group.memory_file), group.memory_size)


@recovers(KIND)
def recover_resume(ctx: OpContext, op: str, plan: dict[str, Any], domain: DomainInfo) -> None:
    """Once libvirtd is done with the domain, the copy goes; the domain stays as it is
    (running: resumed; stopped: `start` boots it cold)."""
    settled = settled_domain(ctx, domain)
    if settled is None:
        return  # libvirtd may still read the copy: a later `recover`
    ctx.remove_files([plan["copy"]])
    if settled.state.is_live:
        ctx.journal.close(op, DONE, detail="the domain was resumed")
        after_resume(ctx, settled.uuid, {"paused": False})
        return
    ctx.journal.close(op, ROLLED_BACK, detail="not resumed; the domain is defined, stopped")
