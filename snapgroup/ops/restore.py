"""Restore a backup: a new VM defined from its manifest, or the disk images alone;
journaled, so a killed restore leaves no VM and no file (ops/backing_up.py does the
copying and the checks)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from snapgroup.domain.backup_manifest import BackupManifest
from snapgroup.domain.errors import (
    InvalidArgument,
    OperationError,
    SnapgroupError,
)
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.validate import parse_uuid, validate_name
from snapgroup.ops.backing_up import (
    RESTORE,
    chain_problems,
    describe,
    open_store,
    present_backup,
    verify_backups,
)
from snapgroup.ops.context import OpContext
from snapgroup.ops.journal import DONE, ROLLED_BACK
from snapgroup.ops.memory_copies import resume_unpacked, unpack_for
from snapgroup.ops.pull_room import check_pull_room
from snapgroup.ops.recovery import recovers
from snapgroup.ops.resolve import lookup_or_none
from snapgroup.ports import BackupStore, ProgressFn


@dataclass(frozen=True)
class Restored:
    backup_id: str
    vm_uuid: str | None  # the new VM (None: --to-dir, images only)
    vm_name: str | None
    state: str | None
    files: Mapping[str, str]  # target -> written file
    keep_chain: bool
    resumed: bool = False  # started from the backup's memory state, at the group's moment
    note: str | None = None  # what did not go as it should around a resume

    def to_dict(self) -> dict[str, Any]:
        return {
            "backupId": self.backup_id,
            "vmInstanceUuid": self.vm_uuid,
            "name": self.vm_name,
            "state": self.state,
            "keepChain": self.keep_chain,
            "resumedFromMemory": self.resumed,
            "note": self.note,
            "disks": [{"target": t, "installPath": p} for t, p in sorted(self.files.items())],
        }


DEFAULT_DISK_DIR = "/var/lib/libvirt/images"


def restore(
    ctx: OpContext,
    backup_id: str,
    *,
    source: str,
    as_vm: str | None = None,
    to_dir: str | None = None,
    disk_dir: str | None = None,
    keep_chain: bool = False,
    start: bool = False,
    progress: ProgressFn | None = None,
    check_data: bool = True,
    resume: bool = False,
) -> Restored:
    """Restore any backup: as a new VM `as_vm` (its disks new UUID-named files in
    `disk_dir`, default beside the original VM's disks when it is defined here, else
    /var/lib/libvirt/images), or only its images into `to_dir`. Flattened, or with
    `keep_chain` thin overlays on the repository's files. A damaged chain is refused
    before anything is written. Journaled: a killed restore leaves no VM and no files.
    `check_data` False (instant recovery, with `keep_chain`): the chain is checked only
    as far as its sizes and headers go (chain_problems); its checksums are the caller's
    to verify, after the start. `resume` (instant recovery, whose copy boots any other
    VM under its journal): a memory group's backup is resumed as with `start`, but a
    state that cannot be (damaged, gone) leaves the VM stopped, said in the note."""
    if (as_vm is None) == (to_dir is None):
        raise InvalidArgument("restore needs exactly one of --as NEW_VM and --to-dir PATH")
    if (start or resume) and as_vm is None:
        raise InvalidArgument("--start needs --as NEW_VM")
    if not (check_data or keep_chain):
        raise InvalidArgument("a flattened restore reads every byte: it checks them too")
    store = open_store(ctx, source)
    backup_id = parse_uuid(backup_id, "backup id")
    manifest = present_backup(ctx.images, store, backup_id, memory=start)  # resumed only then
    restore_id = ctx.new_uuid()  # the new VM's UUID; the journal's lock name
    if as_vm is not None:
        as_vm = validate_name(as_vm)
        if lookup_or_none(ctx, as_vm) is not None:
            raise InvalidArgument(f"a VM named {as_vm!r} already exists")
        directory = disk_dir or _beside_original(ctx, manifest.vm_uuid)
        names = {d.target: f"{ctx.new_uuid()}.qcow2" for d in manifest.disks}
    else:
        assert to_dir is not None
        directory = to_dir
        names = {d.target: d.file for d in manifest.disks}
    directory = os.path.abspath(directory)
    if to_dir is not None and not os.path.lexists(directory):
        _make_directory(directory)
    if not os.path.isdir(directory):
        raise InvalidArgument(f"{directory} is not a directory")
    files = {t: os.path.join(directory, n) for t, n in names.items()}
    for path in files.values():
        if ctx.images.exists(path):
            raise OperationError(f"{path} already exists; refusing to overwrite")
    plan = {
        "repo": store.root,
        "backup_id": backup_id,
        "vm_uuid": restore_id if as_vm else None,
        "name": as_vm,
        "files": files,
    }
    # backups_lock: no prune merges these files while they are read.
    with (
        ctx.locks.vm(restore_id, wait=ctx.lock_wait),
        ctx.locks.backups(manifest.vm_uuid, wait=ctx.lock_wait),
    ):
        op = ctx.journal.begin(RESTORE, restore_id, plan)
        # The checksums are read while the copies run (both read the same files, mostly
        # from the page cache): a damaged chain's copies are removed and the restore
        # refused all the same, in about the time of the copy alone.
        pool = ThreadPoolExecutor(1, thread_name_prefix="verify")
        checking = (
            pool.submit(verify_backups, ctx.images, store, backup_id, memory=start)
            if check_data
            else None
        )
        try:
            problems = [] if check_data else chain_problems(ctx.images, store, manifest)
            if problems:
                raise OperationError(
                    f"backup {backup_id} cannot be restored: {'; '.join(problems)}"
                )
            for disk in manifest.disks:
                out = files[disk.target]
                src = store.file(manifest, disk.volume_uuid)
                if keep_chain:  # sized as recorded: written in-process, src not opened
                    ctx.images.create_overlay(
                        out, backing=src, backing_format="qcow2", size=disk.virtual_size
                    )
                else:
                    ctx.images.flatten(src, out, shared=False, progress=progress)
            if not check_data:  # instant recovery: every disk is pulled local next
                check_pull_room(ctx, files.values(), live=False)
            report = checking.result() if checking is not None else None
            if report is not None and not report.clean:
                raise OperationError(
                    f"backup {backup_id} cannot be restored: {describe(store, report)}"
                )
            if keep_chain and as_vm is not None:  # its QEMU reads the repository's files
                store.open_to_qemu(_chain_files(store, manifest))
            if keep_chain:  # its disks read the repository's files: no prune may merge them
                store.hold(manifest, restore_id, sorted(files.values()))
            ctx.journal.step(op, RESTORE, "written")
            if as_vm is not None:
                ctx.hv.define_restored(
                    manifest.domain_xml, name=as_vm, new_uuid=restore_id, sources=files
                )
                ctx.journal.step(op, RESTORE, "defined")
        except SnapgroupError as exc:
            if as_vm is None or lookup_or_none(ctx, restore_id) is None:
                ctx.remove_files(list(files.values()))
                ctx.journal.close(op, ROLLED_BACK, detail=f"restore failed: {exc.details}")
                raise
        finally:
            pool.shutdown(wait=True)
        ctx.journal.close(op, DONE, detail=f"backup {backup_id} restored")
        # A memory group's backup: its saved state unpacked as the new VM's (no prune runs),
        # and resumed under the new VM's lock (a `recover` elsewhere would otherwise take
        # the unpacked state for a dead process's and remove it).
        note = None
        try:
            wanted = start or resume
            resuming = unpack_for(ctx, store, manifest, restore_id, directory) if wanted else None
            if as_vm is not None and resuming is not None:
                note = resume_unpacked(ctx, resuming, restore_id, files)
        except OperationError as exc:
            if not resume:
                raise
            resuming, cause = None, exc.cause.details if exc.cause else exc.details
            note = f"not resumed from the backup's memory state ({cause}): booted cold"
    state = None
    if as_vm is not None:
        if resuming is None and start:
            ctx.hv.start(restore_id)
        domain = lookup_or_none(ctx, restore_id)
        state = domain.state.value if domain is not None else "Unknown"
    resumed = resuming is not None
    return Restored(
        backup_id, restore_id if as_vm else None, as_vm, state, files, keep_chain, resumed, note
    )


def _make_directory(directory: str) -> None:
    """--to-dir's target, made as `mkdir -p -m 0700` would (virtnbdrestore makes it too)."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except NotADirectoryError as exc:
        raise InvalidArgument(f"cannot create {directory}: {exc.strerror}") from exc
    except OSError as exc:
        raise OperationError(f"cannot create {directory}: {exc.strerror}") from exc


def _chain_files(store: BackupStore, manifest: BackupManifest) -> list[str]:
    """Every repository file the backup's disks read: their own and their bases'."""
    return [
        store.member_file(manifest.vm_uuid, member, disk.volume_uuid)
        for disk in manifest.disks
        for member in disk.chain
    ]


def _beside_original(ctx: OpContext, vm_uuid: str) -> str:
    domain = lookup_or_none(ctx, vm_uuid)
    for disk in domain.disks if domain is not None else ():
        if disk.path and disk.path.startswith("/"):
            return os.path.dirname(disk.path)
    return DEFAULT_DISK_DIR


@recovers(RESTORE, without_vm=True)
def recover_restore(ctx: OpContext, op: str, plan: dict[str, Any], _domain: DomainInfo) -> None:
    """Defined: done (its disks are written). Else every file it may have written goes."""
    if plan["vm_uuid"] is not None and lookup_or_none(ctx, plan["vm_uuid"]) is not None:
        ctx.journal.close(op, DONE, detail="restored VM was defined")
        return
    ctx.remove_files(list(plan["files"].values()))
    ctx.journal.close(op, ROLLED_BACK, detail="restore interrupted: its files removed")
