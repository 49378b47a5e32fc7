"""Finishing one merge from whatever state it is in: the same code serves a delete and
the recovery of a delete that was interrupted at any step."""

from __future__ import annotations

from dataclasses import dataclass

from snapgroup.errors import OperationError
from snapgroup.journal import Journal, checkpoint
from snapgroup.models import BlockJobProgress
from snapgroup.planner import MergeKind, MergePlan
from snapgroup.ports import Hypervisor, ImageTool, ProgressFn


def _watched(progress: ProgressFn | None) -> ProgressFn:
    """Progress that also marks the named step 'delete:merging' (a job under way)."""

    def report(p: BlockJobProgress) -> None:
        checkpoint("delete:merging")
        if progress is not None:
            progress(p)

    return report


@dataclass(frozen=True)
class MergeSpec:
    """A MergePlan as the journal keeps it (JSON-able, no rows)."""

    snapshot_uuid: str
    volume_uuid: str
    target: str
    kind: str
    top: str
    base: str
    above: str | None

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
        )

    @property
    def active(self) -> bool:
        return self.kind == MergeKind.ACTIVE.value


class Merger:
    def __init__(self, hv: Hypervisor, images: ImageTool, journal: Journal) -> None:
        self.hv, self.images, self.journal = hv, images, journal

    def finish(
        self, op: str, vm_uuid: str, live: bool, spec: MergeSpec, progress: ProgressFn | None
    ) -> None:
        """Merge spec.top down into spec.base unless that already happened, then drop
        spec.top. Every intermediate state is a valid chain with the same current data."""
        if live:
            self.hv.settle_block_job(vm_uuid, spec.target)
        if self._top_in_chain(vm_uuid, live, spec):
            self.journal.step(op, "delete", f"merge {spec.target}")
            progress = _watched(progress)
            if live:
                top = None if spec.active else spec.top
                self.hv.block_commit(
                    vm_uuid, spec.target, top=top, base=spec.base, progress=progress
                )
            else:
                self.images.commit(spec.top, base=spec.base, progress=progress)
                self.journal.step(op, "delete", f"committed {spec.target}")
                if spec.active:
                    self.hv.set_disk_sources(vm_uuid, {spec.target: spec.base})
                else:
                    assert spec.above is not None
                    self.images.rebase(
                        spec.above, backing=spec.base, backing_format="qcow2", unsafe=True
                    )
            self.journal.step(op, "delete", f"merged {spec.target}")
        if not live:
            # libvirt keeps a <backingStore> chain in the persistent definition and trusts
            # it over the image headers at the next start: rewrite it (idempotent).
            top = self._disk_path(vm_uuid, spec.target)
            if top is not None:
                self.hv.set_disk_sources(vm_uuid, {spec.target: top})
        self.images.remove(spec.top)
        self.journal.step(op, "delete", f"removed {spec.target}")

    def _disk_path(self, vm_uuid: str, target: str) -> str | None:
        return next(d.path for d in self.hv.lookup(vm_uuid).disks if d.target == target)

    def _top_in_chain(self, vm_uuid: str, live: bool, spec: MergeSpec) -> bool:
        if spec.active:
            below = self._disk_path(vm_uuid, spec.target)
        else:
            assert spec.above is not None
            below = self.images.chain(spec.above, shared=live)[0].backing
        if below == spec.top:
            return True
        if below == spec.base:
            return False
        what = f"disk {spec.target}" if spec.active else spec.above
        raise OperationError(
            f"{what} sits on {below}, neither {spec.top} nor {spec.base}: chain changed"
        )
