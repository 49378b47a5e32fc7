"""Finishing one merge from whatever state it is in: the same code serves a delete and
the recovery of a delete that was interrupted at any step."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from snapgroup.domain.errors import OperationError, SnapgroupError
from snapgroup.domain.models import BlockJobProgress
from snapgroup.domain.planner import MergeKind, MergePlan
from snapgroup.ops.journal import REBASING, WRITING, Journal, checkpoint
from snapgroup.ports import Hypervisor, ImageTool, ProgressFn
from snapgroup.store.repo import Repo
from snapgroup.store.tables import SnapshotRow


def _watched(progress: ProgressFn | None, kind: str = "delete") -> ProgressFn:
    """Progress that also marks the named step '<kind>:merging' (a job under way)."""

    def report(p: BlockJobProgress) -> None:
        checkpoint(f"{kind}:merging")
        if progress is not None:
            progress(p)

    return report


class _CombinedProgress:
    """One progress for block jobs running side by side: the sums of their latest
    figures, reported under a lock (the caller's callback sees one thread at a time)."""

    def __init__(self, progress: ProgressFn | None, parts: int) -> None:
        self._progress = progress
        self._latest = [BlockJobProgress(cur=0, end=0)] * parts
        self._lock = threading.Lock()

    def part(self, index: int) -> ProgressFn | None:
        if self._progress is None:
            return None
        progress = self._progress

        def report(p: BlockJobProgress) -> None:
            with self._lock:
                self._latest[index] = p
                cur = sum(x.cur for x in self._latest)
                end = sum(x.end for x in self._latest)
                if cur >= end and any(x.end == 0 or x.cur < x.end for x in self._latest):
                    end = cur + 1  # not done while a job has not reported its end
                progress(BlockJobProgress(cur=cur, end=end))

        return report


def merging_into(plan: dict[str, Any]) -> dict[str, str]:
    """Snapshot uuid -> its file, for every merge of the journaled operation whose commit
    into that file began (it holds a later layer's data unless the merge completed)."""
    return {k.removeprefix(WRITING): v for k, v in plan.items() if k.startswith(WRITING)}


@dataclass(frozen=True)
class MergeSpec:
    """A MergePlan as the journal keeps it (JSON-able, no rows). The fields after `above`
    came with trees; their defaults describe the linear chains journaled before them."""

    snapshot_uuid: str
    volume_uuid: str
    target: str
    kind: str
    top: str
    base: str
    above: str | None
    above_all: tuple[str, ...] = ()
    detach: tuple[str, ...] = ()
    detached: tuple[str, ...] = ()  # the snapshot uuids of the `detach` files, same order
    parent: str | None = None
    parent_uuid: str | None = None
    active_chain: bool = True

    def __post_init__(self) -> None:
        # JSON gives lists back; keep the frozen value hashable and typed as declared.
        object.__setattr__(self, "above_all", tuple(self.above_all))
        object.__setattr__(self, "detach", tuple(self.detach))
        object.__setattr__(self, "detached", tuple(self.detached))
        if not self.above_all and self.above is not None:
            object.__setattr__(self, "above_all", (self.above,))

    @classmethod
    def of(cls, plan: MergePlan[SnapshotRow], target: str) -> MergeSpec:
        return cls(
            plan.snapshot.uuid,
            plan.snapshot.volume_uuid,
            target,
            plan.kind.value,
            plan.top,
            plan.base,
            plan.above,
            plan.above_all,
            plan.detach,
            tuple(s.uuid for s in plan.detached),
            plan.parent,
            plan.snapshot.parent_uuid,
            plan.active_chain,
        )

    @property
    def active(self) -> bool:
        return self.kind == MergeKind.ACTIVE.value

    @property
    def has_heir(self) -> bool:
        return self.kind != MergeKind.DETACH.value


class Merger:
    def __init__(
        self, hv: Hypervisor, images: ImageTool, journal: Journal, *, kind: str = "delete"
    ) -> None:
        self.hv, self.images, self.journal = hv, images, journal
        self.kind = kind  # the journal kind whose steps these are (fault-injection names)

    def finish(
        self, op: str, vm_uuid: str, live: bool, spec: MergeSpec, progress: ProgressFn | None
    ) -> None:
        """Merge the snapshot away unless that already happened, then drop the file that
        is left over. Every intermediate state is a valid tree with the same data at
        every point in time, so this same code finishes an interrupted merge."""
        if self._begin(op, vm_uuid, live, spec):
            self._commit(op, vm_uuid, live, spec, progress)
        self._end(op, vm_uuid, live, spec)

    def finish_many(
        self,
        op: str,
        vm_uuid: str,
        live: bool,
        specs: Sequence[MergeSpec],
        progress: ProgressFn | None,
    ) -> dict[str, SnapgroupError | None]:
        """finish() for merges on distinct disks, each one's error (None: merged) by
        snapshot uuid. Live, every disk's block commit runs beside the others' (libvirt
        allows one job per disk; QEMU runs them side by side), and a disk's file removal
        (~1 s/GiB: the filesystem discards the blocks) overlaps the commits still running.
        Only the block jobs run in worker threads: the journal and the store are written
        from this thread, each disk's steps in finish()'s order, so recovery is as for
        finish(). One disk failing is that disk's result; the others go on."""
        if len({s.target for s in specs}) != len(specs):
            raise ValueError("finish_many needs merges on distinct disks")
        errors: dict[str, SnapgroupError | None] = {s.snapshot_uuid: None for s in specs}
        jobs: list[MergeSpec] = []
        here: list[MergeSpec] = []  # finished in this thread: not a libvirt block job
        for spec in specs:
            try:
                if not self._begin(op, vm_uuid, live, spec):
                    here.append(spec)  # nothing left to commit: only the removal
                elif self._via_libvirt(live, spec):
                    jobs.append(spec)
                else:
                    self._commit(op, vm_uuid, live, spec, progress)
                    here.append(spec)
            except SnapgroupError as exc:
                errors[spec.snapshot_uuid] = exc
        combined = _CombinedProgress(progress, len(jobs))
        # Leaving the `with` waits for every job, also when this thread raises: no
        # block job is left running unattended.
        with ThreadPoolExecutor(max(1, len(jobs)), thread_name_prefix="snapgroup-merge") as pool:
            futures = {
                pool.submit(self._block_commit, vm_uuid, spec, combined.part(i)): spec
                for i, spec in enumerate(jobs)
            }
            for spec in here:
                self._end_or_error(op, vm_uuid, live, spec, errors, None)
            for future in as_completed(futures):
                spec = futures[future]
                self._end_or_error(op, vm_uuid, live, spec, errors, future)
        return errors

    def _end_or_error(
        self,
        op: str,
        vm_uuid: str,
        live: bool,
        spec: MergeSpec,
        errors: dict[str, SnapgroupError | None],
        job: Future[None] | None,
    ) -> None:
        try:
            if job is not None:
                job.result()
                self.journal.step(op, self.kind, f"merged {spec.target}")
            self._end(op, vm_uuid, live, spec)
        except SnapgroupError as exc:
            errors[spec.snapshot_uuid] = exc

    @staticmethod
    def _via_libvirt(live: bool, spec: MergeSpec) -> bool:
        # Only the path to the current top is open in a running QEMU: the rest of the
        # tree is plain files, for qemu-img even while the VM runs.
        return live and spec.active_chain and spec.has_heir

    def _begin(self, op: str, vm_uuid: str, live: bool, spec: MergeSpec) -> bool:
        """Up to the heir's commit: finish a job left running, detach the children. True
        when the heir's commit is still to do (its step is journaled then)."""
        if self._via_libvirt(live, spec):
            self.hv.settle_block_job(vm_uuid, spec.target)
        for child, child_uuid in zip(spec.detach, spec.detached, strict=True):
            self._detach(op, live, spec, child, child_uuid)
        if not spec.has_heir or not self._top_in_chain(vm_uuid, live, spec):
            return False
        # Committed before the commit starts: from here until the merge is recorded, S's
        # file may hold part of the heir's data. A merge that does not complete (an error,
        # or a process killed mid-commit whose recovery fails too) marks S changed.
        self.journal.step(
            op, self.kind, f"merge {spec.target}", **{WRITING + spec.snapshot_uuid: spec.base}
        )
        return True

    def _commit(
        self, op: str, vm_uuid: str, live: bool, spec: MergeSpec, progress: ProgressFn | None
    ) -> None:
        if self._via_libvirt(live, spec):
            self._block_commit(vm_uuid, spec, progress)
        else:
            self.images.commit(spec.top, base=spec.base, progress=_watched(progress, self.kind))
            self.journal.step(op, self.kind, f"committed {spec.target}")
            if spec.active:
                self.hv.set_disk_sources(vm_uuid, {spec.target: spec.base})
            elif spec.above is not None:
                self.images.rebase(
                    spec.above, backing=spec.base, backing_format="qcow2", unsafe=True
                )
        self.journal.step(op, self.kind, f"merged {spec.target}")

    def _block_commit(self, vm_uuid: str, spec: MergeSpec, progress: ProgressFn | None) -> None:
        """The live commit of the heir: hypervisor calls only (run in a worker thread)."""
        top = None if spec.active else spec.top
        self.hv.block_commit(
            vm_uuid, spec.target, top=top, base=spec.base, progress=_watched(progress, self.kind)
        )

    def _end(self, op: str, vm_uuid: str, live: bool, spec: MergeSpec) -> None:
        """After the heir's commit: re-point what still sits on the heir, drop its file."""
        if spec.has_heir:
            for above in spec.above_all:
                self._relink(op, live, spec, above)
        if not live:
            # libvirt keeps a <backingStore> chain in the persistent definition and trusts
            # it over the image headers at the next start: rewrite it (idempotent).
            top = self._disk_path(vm_uuid, spec.target)
            if top is not None:
                self.hv.set_disk_sources(vm_uuid, {spec.target: top})
        self.images.remove(spec.top)
        self.journal.step(op, self.kind, f"removed {spec.target}")

    def _backing(self, path: str, live: bool) -> str | None:
        return self.images.chain(path, shared=live)[0].backing

    def _detach(self, op: str, live: bool, spec: MergeSpec, child: str, child_uuid: str) -> None:
        """Safe rebase of a child off the snapshot: it copies the snapshot's data, so its
        view stays the same. A rebase cut short only copied data the child already saw
        through the snapshot, so doing it again is right."""
        below = self._backing(child, live)
        if below == spec.base:
            step, written = f"rebase {spec.target}", {REBASING + child_uuid: child}
            self.journal.step(op, self.kind, step, **written)
            self.images.rebase(child, backing=spec.parent, backing_format="qcow2", unsafe=False)
        elif below != spec.parent:
            raise OperationError(
                f"{child} sits on {below}, neither {spec.base} nor {spec.parent}: tree changed"
            )
        # Recorded at once: should the rest of the merge fail, the metadata still tells
        # where this branch really sits.
        with self.journal.db.transaction() as session:
            repo = Repo(session)
            row = repo.snapshot(child_uuid)
            if row is not None and row.parent_uuid == spec.snapshot_uuid:
                row.parent_uuid = spec.parent_uuid
                repo.add(row)
        self.journal.step(op, self.kind, f"rebased {spec.target}")

    def _relink(self, op: str, live: bool, spec: MergeSpec, above: str) -> None:
        """After the commit the heir's data is also in `base`: files still backing on the
        heir (branches off the current path) are re-pointed, header only."""
        below = self._backing(above, live)
        if below == spec.base:
            return
        if below != spec.top:
            raise OperationError(
                f"{above} sits on {below}, neither {spec.top} nor {spec.base}: chain changed"
            )
        self.images.rebase(above, backing=spec.base, backing_format="qcow2", unsafe=True)

    def _disk_path(self, vm_uuid: str, target: str) -> str | None:
        return next(d.path for d in self.hv.lookup(vm_uuid).disks if d.target == target)

    def _top_in_chain(self, vm_uuid: str, live: bool, spec: MergeSpec) -> bool:
        """Is the heir's commit still to do? Judged by what sits on the heir: the disk
        (active), the first file above it, or, for a heir nothing sits on, its file."""
        if spec.active:
            below = self._disk_path(vm_uuid, spec.target)
        elif spec.above is not None:
            below = self._backing(spec.above, live)
        else:
            # A leaf heir: committing it again is harmless; once removed it is done.
            return self.images.exists(spec.top)
        if below == spec.top:
            return True
        if below == spec.base:
            return False
        what = f"disk {spec.target}" if spec.active else spec.above
        raise OperationError(
            f"{what} sits on {below}, neither {spec.top} nor {spec.base}: chain changed"
        )
