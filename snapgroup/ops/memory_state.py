"""Memory groups: a running VM's memory state saved with its disks at one instant, and
resumed by a revert (create, revert, delete, ungroup, check and verify share this).

Create (creating.py with `memory`): ONE libvirt snapshot call saves the memory to
`<uuid>.mem` beside the root disk and switches every disk onto its overlay
(Hypervisor.snapshot_with_memory); the guest is paused for the save, or with `live`
keeps running while most of its memory is copied. The group records the file, its
size, its SHA-256 and how it was taken. Refused before anything is made or paused: a
VM that is not running, a memory that would not fit on the file's filesystem, and
application consistency (a guest frozen for the snapshot would resume frozen).

Revert (reverting.py, with the group's memory): libvirt 9.0 cannot revert to an external
snapshot itself, but the memory file is a save image: the VM is stopped, every disk
gets a fresh overlay on its snapshot as in a disk revert, the persistent definition is
switched onto them (one defineXML), then the saved state is restored onto them
(Hypervisor.restore_memory), the guest runs on from that moment and its clock is set
through the agent (best effort). A restore that fails puts the disks back.

The file lives as long as its group: delete and ungroup remove it; `check` calls the
group unavailable when it is gone or its checksum changed.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from snapgroup.domain.errors import InvalidArgument, OperationError, SnapgroupError
from snapgroup.domain.models import DomainInfo, VmState
from snapgroup.domain.planner import PlannedDisk
from snapgroup.ops.consistency import Consistency, ConsistencyRecord, ConsistencyType
from snapgroup.ops.context import OpContext
from snapgroup.store.repo import Repo
from snapgroup.store.tables import GroupRow

log = logging.getLogger(__name__)

# Beyond the guest's memory, a save image holds a header and the domain's XML (a few
# KiB); QEMU's device state is small. Counted once per memory snapshot.
MEMORY_MARGIN = 16 << 20
# How long a recovery waits for libvirtd to finish a memory save or a restore that a
# killed process asked for (libvirtd goes on without its client): a large guest's
# memory on a slow disk. Past it, the journal stays open for a later `recover`.
JOB_WAIT_S = 600.0
LIVE, PAUSED = "live", "paused"
SUFFIX = ".mem"
_OURS = re.compile(r"^[0-9a-f]{32}\.mem$")  # memory files are named by UUID
MEMORY_NOTE = (
    "memory state saved with the disks: a revert resumes the guest at this moment "
    "(the disks alone are crash-consistent)"
)


@dataclass(frozen=True)
class MemoryOptions:
    """A create's memory request. `live`: the guest runs while most of its memory is
    copied (a shorter pause, a larger file when it keeps writing)."""

    live: bool = False


def memory_consistency(mode: Consistency) -> Consistency:
    """A memory group's freeze mode: never a freeze (the frozen guest would be saved,
    and resumed, frozen); `application` asked for explicitly is refused."""
    if mode is Consistency.APPLICATION:
        raise InvalidArgument(
            "--with-memory saves the running guest whole and does not freeze its "
            "filesystems (it would resume frozen): use --consistency auto or crash"
        )
    return Consistency.CRASH


def memory_record() -> ConsistencyRecord:
    return ConsistencyRecord(ConsistencyType.CRASH, note=MEMORY_NOTE)


def refuse_stopped(domain: DomainInfo) -> None:
    if not domain.state.is_live:
        raise OperationError(
            f"VM {domain.name} is {domain.state.value}: a memory group needs it running "
            "(a stopped VM has no memory state; take a disk-only group)"
        )


def refuse_unsaved_disks(planned: Iterable[PlannedDisk], vm_name: str) -> None:
    """A writable disk the group cannot snapshot (raw, block, network: skipped with
    skip_unsupported) would be resumed as it is then under a memory that knew it as it
    was: the guest's caches and filesystems would not match it. Refused, nothing made."""
    unsaved = [p for p in planned if p.blocks_create]
    if unsaved:
        listed = "; ".join(f"{p.disk.target}: {p.skip_reason}" for p in unsaved)
        raise OperationError(
            f"VM {vm_name} has writable disks a memory group cannot snapshot ({listed}): "
            "its revert would resume the guest's memory over their later contents, "
            "which the guest does not know. Take a disk-only group (skip_unsupported)"
        )


def plan_memory(
    ctx: OpContext, domain: DomainInfo, root_path: str, options: MemoryOptions
) -> dict[str, Any]:
    """Where the memory goes, once it is known to fit: the journal's plan["memory"].
    Nothing is made or paused here."""
    refuse_stopped(domain)
    directory = os.path.dirname(root_path)
    path = os.path.join(directory, f"{ctx.new_uuid()}{SUFFIX}")
    if ctx.images.exists(path):
        raise OperationError(f"memory file path already exists: {path}")
    memory = ctx.hv.memory_bytes(domain.uuid)
    need = memory + MEMORY_MARGIN
    free = ctx.images.free_bytes(directory)
    if free < need:
        raise OperationError(
            f"VM {domain.name}: its memory state ({_mib(memory)} MiB, {_mib(need)} MiB with "
            f"the save image's margin) would not fit on the filesystem of {directory} "
            f"({_mib(free)} MiB free): nothing was done"
        )
    return {"file": path, "live": options.live, "state": domain.state.value}


def memory_columns(ctx: OpContext, memory: dict[str, Any]) -> dict[str, Any]:
    """A memory group's columns, its file read once for the checksum."""
    digest = ctx.images.digest(memory["file"])
    return {
        "memory_file": memory["file"],
        "memory_size": digest.size,
        "memory_sha256": digest.sha256,
        "memory_mode": LIVE if memory["live"] else PAUSED,
    }


def settled_domain(ctx: OpContext, domain: DomainInfo) -> DomainInfo | None:
    """The domain once libvirt runs no job on it any more (a snapshot or a restore an
    interrupted process started goes on inside libvirtd): None while it still does."""
    if not ctx.hv.wait_idle(domain.uuid, timeout=JOB_WAIT_S):
        log.warning("VM %s: libvirt is still at work on it; recover later", domain.name)
        return None
    return ctx.hv.lookup(domain.uuid)


def resume_left_paused(ctx: OpContext, memory: dict[str, Any], domain: DomainInfo) -> str:
    """After an interrupted memory snapshot: a VM that was running and is paused now
    (libvirt paused it for the save) runs again. Returns a note ("" when nothing was
    done)."""
    if memory.get("state") != VmState.RUNNING.value or domain.state is not VmState.PAUSED:
        return ""
    try:
        ctx.hv.resume(domain.uuid)
    except SnapgroupError as exc:
        log.error("VM %s was left paused and could not be resumed: %s", domain.name, exc)
        return f"; VM left paused, resuming it failed ({exc.details}): run `virsh resume`"
    return "; the VM, left paused by the save, was resumed"


MemoryCheck = Callable[[GroupRow], str | None]


def memory_checker(ctx: OpContext) -> MemoryCheck:
    """Why a group's memory state cannot be resumed (None: it can, or it has none):
    its file is gone, cannot be read, or is not what was saved (size and SHA-256)."""

    def problem(group: GroupRow) -> str | None:
        path = group.memory_file
        if path is None:
            return None
        if not ctx.images.exists(path):
            return f"memory file {path} of the group is missing"
        try:
            digest = ctx.images.digest(path)
        except SnapgroupError as exc:
            return f"memory file {path} cannot be read ({exc.details})"
        if digest.size != group.memory_size or digest.sha256 != group.memory_sha256:
            return (
                f"memory file {path} changed since the group was taken (sha256 "
                f"{digest.sha256[:16]}..., {digest.size} bytes; recorded "
                f"{(group.memory_sha256 or '')[:16]}..., {group.memory_size} bytes)"
            )
        return None

    return problem


class Resumed(StrEnum):
    """Where resume_state left the VM."""

    RUNNING = "running"  # from the saved state (running or paused, as asked)
    ROLLED_BACK = "rolled-back"  # not resumed; its definition back on the old disks
    UNKNOWN = "unknown"  # not resumed, and it could not be looked at: `recover` decides


def resume_state(
    ctx: OpContext,
    vm_uuid: str,
    memory: dict[str, Any],
    sources: dict[str, str],
    old_sources: dict[str, str],
) -> tuple[Resumed, SnapgroupError | None]:
    """The stopped VM, whose definition is on `sources` already, started from the saved
    state on them (`memory`: its file and `paused`). A VM running already was restored
    by an interrupted process: a paused one runs (unless asked paused). When the restore
    fails the definition goes back to `old_sources` and the error is returned."""
    domain = ctx.hv.lookup(vm_uuid)
    if domain.state.is_live:
        if domain.state is VmState.PAUSED and not memory["paused"]:
            ctx.hv.resume(vm_uuid)
        return Resumed.RUNNING, None
    try:
        ctx.hv.restore_memory(vm_uuid, memory["file"], sources, paused=memory["paused"])
    except SnapgroupError as exc:
        try:
            if ctx.hv.lookup(vm_uuid).state.is_live:
                return Resumed.RUNNING, None  # restored after all: the error came later
            if old_sources:
                ctx.hv.set_disk_sources(vm_uuid, old_sources)
        except SnapgroupError:
            return Resumed.UNKNOWN, exc
        return Resumed.ROLLED_BACK, exc
    return Resumed.RUNNING, None


def after_resume(ctx: OpContext, vm_uuid: str, memory: dict[str, Any]) -> str | None:
    """The guest's clock set to now through its agent, when it runs and answers (best
    effort: a guest without an agent keeps the snapshot's time until it syncs). A note
    when it could not be."""
    if memory.get("paused"):
        return "resumed paused: the guest clock is set by the guest once it runs"
    try:
        ctx.hv.set_guest_time(vm_uuid, timeout=ctx.freeze_timeout)
    except SnapgroupError as exc:
        return f"guest clock not set ({exc.details})"
    return None


def clock_setter(ctx: OpContext, vm_uuid: str, memory: dict[str, Any]) -> Callable[[], str | None]:
    """after_resume started at once in a thread of its own, so that what a revert does
    after the resume (the old files removed, the rows updated) runs while the guest's
    agent wakes: its first answer after a resume takes ~0.2 s here (TCG). Returns the
    function that waits for it: its note. Never left running past the revert: an agent
    call still waiting when the VM is destroyed holds up libvirt's next calls on the
    domain for seconds (seen: defineXML and lookups 5 s)."""
    done: list[str | None] = []

    def run() -> None:
        try:
            done.append(after_resume(ctx, vm_uuid, memory))
        except Exception as exc:  # best effort: said in the note
            done.append(f"guest clock not set ({exc})")

    thread = threading.Thread(target=run, name=f"guest-clock-{vm_uuid[:8]}", daemon=True)
    thread.start()

    def wait() -> str | None:
        thread.join()
        return done[0] if done else "guest clock not set"

    return wait


def _mib(n: int) -> int:
    return -(-n // (1 << 20))


@dataclass(frozen=True)
class MemoryFinding:
    """What `verify` reports of a VM's memory files (as a Difference)."""

    kind: str
    detail: str
    groups: tuple[str, ...] = ()
    severity: str = "error"


def memory_findings(
    ctx: OpContext, vm_uuid: str, directories: Iterable[str], *, busy: bool
) -> list[MemoryFinding]:
    """Each of the VM's memory groups whose memory file is gone or not what was saved
    (memory-missing, memory-changed), and, unless an operation is at work on the VM
    (`busy`), UUID-named memory files in its disks' directories that no group of the
    store records (orphan-memory: a warning; never removed here, since another store's
    VM may keep its disks in the same directory)."""
    with ctx.db.transaction() as session:
        repo = Repo(session)
        groups = [g for g in repo.groups(vm_uuid=vm_uuid) if g.memory_file is not None]
        recorded = repo.memory_files()
    check = memory_checker(ctx)
    found = []
    for group in groups:
        problem = check(group)
        if problem is not None:
            kind = "memory-missing" if problem.endswith("is missing") else "memory-changed"
            found.append(MemoryFinding(kind, problem, (group.uuid,)))
    if busy:
        return found
    for directory in sorted(set(directories)):
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if _OURS.match(name) and path not in recorded:
                detail = f"{path}: a memory file no group records (remove it if no store does)"
                found.append(MemoryFinding("orphan-memory", detail, severity="warning"))
    return found
