"""Finishing one merge from whatever state it is in: the same code serves a delete and
the recovery of a delete that was interrupted at any step."""

from __future__ import annotations

from dataclasses import dataclass

from snapgroup.errors import OperationError
from snapgroup.journal import Journal, checkpoint
from snapgroup.models import BlockJobProgress
from snapgroup.planner import MergeKind, MergePlan
from snapgroup.ports import Hypervisor, ImageTool, ProgressFn
from snapgroup.store.repo import Repo


def _watched(progress: ProgressFn | None, kind: str = "delete") -> ProgressFn:
    """Progress that also marks the named step '<kind>:merging' (a job under way)."""

    def report(p: BlockJobProgress) -> None:
        checkpoint(f"{kind}:merging")
        if progress is not None:
            progress(p)

    return report


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
    def of(cls, plan: MergePlan, target: str) -> MergeSpec:
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
        # Only the path to the current top is open in a running QEMU: the rest of the
        # tree is plain files, for qemu-img even while the VM runs.
        via_libvirt = live and spec.active_chain and spec.has_heir
        if via_libvirt:
            self.hv.settle_block_job(vm_uuid, spec.target)
        for child, child_uuid in zip(spec.detach, spec.detached, strict=True):
            self._detach(op, live, spec, child, child_uuid)
        if spec.has_heir:
            self._merge_heir(op, vm_uuid, live, via_libvirt, spec, progress)
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
            self.journal.step(op, self.kind, f"rebase {spec.target}")
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

    def _merge_heir(
        self,
        op: str,
        vm_uuid: str,
        live: bool,
        via_libvirt: bool,
        spec: MergeSpec,
        progress: ProgressFn | None,
    ) -> None:
        if not self._top_in_chain(vm_uuid, live, spec):
            return
        self.journal.step(op, self.kind, f"merge {spec.target}")
        progress = _watched(progress, self.kind)
        if via_libvirt:
            top = None if spec.active else spec.top
            self.hv.block_commit(vm_uuid, spec.target, top=top, base=spec.base, progress=progress)
        else:
            self.images.commit(spec.top, base=spec.base, progress=progress)
            self.journal.step(op, self.kind, f"committed {spec.target}")
            if spec.active:
                self.hv.set_disk_sources(vm_uuid, {spec.target: spec.base})
            elif spec.above is not None:
                self.images.rebase(
                    spec.above, backing=spec.base, backing_format="qcow2", unsafe=True
                )
        self.journal.step(op, self.kind, f"merged {spec.target}")

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
