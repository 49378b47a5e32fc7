"""The autosnap pass's port (ops/autosnap.py AutosnapPort) on the real context: VMs and
their policy-marked groups from the store, a create that records the marks in the
group's own transaction, the engine's delete (which refuses a protected group), and
the free space of the filesystems holding a VM's disks."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from snapgroup.domain.errors import SnapgroupError
from snapgroup.domain.retention import AutoGroup, Policy, Take, VmRef
from snapgroup.infra import fs
from snapgroup.ops.consistency import Consistency
from snapgroup.ops.context import OpContext
from snapgroup.ops.creating import create_locked
from snapgroup.ops.lineage import pinned_snapshots
from snapgroup.ops.memory_state import MemoryOptions
from snapgroup.store.policy_repo import PolicyRecord, PolicyRepo, encode_marks
from snapgroup.store.repo import Repo

# A group delete (the delete use case, handed in by the facade: use cases never import
# each other); raises on failure.
DeleteFn = Callable[[OpContext, str], None]
# A delete's plan as JSON (dry-run), handed in the same way.
PlanFn = Callable[[OpContext, str], dict[str, Any]]
# Issue 15's hook: export the group just taken to the policy's export_to (keeping
# export_keep); raises on failure. Called only for policies with export_to set.
ExportFn = Callable[[OpContext, VmRef, AutoGroup, PolicyRecord], None]
UsageFn = Callable[[str], tuple[int, int]]


class EnginePort:
    def __init__(
        self,
        ctx: OpContext,
        policies: Sequence[Policy],
        *,
        records: Sequence[PolicyRecord] = (),
        delete: DeleteFn | None = None,
        plan_delete: PlanFn | None = None,
        export: ExportFn | None = None,
        usage: UsageFn = fs.usage,
    ) -> None:
        self.ctx = ctx
        self.policies = list(policies)
        self.records = {r.policy.name: r for r in records}
        self._delete = delete
        self._plan_delete = plan_delete
        self._export = export
        self._usage = usage
        self._lock = threading.Lock()
        self._held: frozenset[str] | None = None

    def vms(self) -> Sequence[VmRef]:
        """Every domain libvirt has that this host owns (a VM another host of a shared
        store owns is left to that host), by UUID order."""
        with self.ctx.db.transaction() as session:
            repo = Repo(session)
            others = repo.vm_uuids() - repo.vm_uuids(host=self.ctx.host)
        return [VmRef(u, n) for u, n in sorted(self.ctx.hv.list_vms()) if u not in others]

    def groups(self, vm: VmRef) -> Sequence[AutoGroup]:
        held = self._clone_read()
        with self.ctx.db.transaction() as session:
            marked = PolicyRepo(session).groups_of(vm.uuid)
        return [
            AutoGroup(g.uuid, g.create_date, g.policies, g.protected, g.uuid in held, name=g.name)
            for g in marked
        ]

    def _clone_read(self) -> frozenset[str]:
        """The groups a clone reads (a snapshot of theirs pinned), found once a pass: a
        clone made meanwhile is still safe, the delete checks its pins again."""
        with self._lock:
            if self._held is None:
                with self.ctx.db.transaction() as session:
                    repo = Repo(session)
                    refs = [repo.ref(sid) for sid in pinned_snapshots(repo)]
                self._held = frozenset(r.group_uuid for r in refs if r is not None)
            return self._held

    def create(
        self, vm: VmRef, take: Take, *, consistency: str, wait: float, with_memory: bool = False
    ) -> AutoGroup:
        ctx = replace(self.ctx, lock_wait=wait)
        ctx.check_owner(vm.uuid)
        with ctx.locks.vm(vm.uuid, wait=wait):
            domain = ctx.hv.lookup(vm.uuid)  # what it is now, under the lock
            group = create_locked(
                ctx,
                domain,
                ctx.new_uuid(),
                take.name,
                f"taken by snapshot policy {', '.join(take.policies)} ({take.label})",
                skip_unsupported=False,
                mode=Consistency.parse(consistency),
                marks={"policy": encode_marks(take.policies), "policy_label": take.label},
                memory=MemoryOptions() if with_memory else None,
            )
        return AutoGroup(group.uuid, group.create_date, frozenset(take.policies), name=take.name)

    def delete(self, group_uuid: str, *, wait: float) -> None:
        if self._delete is None:
            raise NotImplementedError("no delete handed to the port")
        self._delete(replace(self.ctx, lock_wait=wait), group_uuid)

    def plan_delete(self, group_uuid: str) -> dict[str, Any] | None:
        """The delete's plan (dry-run), or None when no planner was handed in."""
        if self._plan_delete is None:
            return None
        try:
            return self._plan_delete(self.ctx, group_uuid)
        except SnapgroupError as exc:
            return {"groupUuid": group_uuid, "error": exc.to_dict()}

    def export(self, vm: VmRef, group: AutoGroup) -> None:
        """After a successful create: export it for each of its policies with export_to."""
        if self._export is None:
            return
        for name in sorted(group.policies):
            record = self.records.get(name)
            if record is not None and record.export_to:
                self._export(self.ctx, vm, group, record)

    def free_percent(self, vm: VmRef) -> tuple[float, str]:
        with self.ctx.db.transaction() as session:
            volumes = Repo(session).volumes_of_vm(vm.uuid, attached_only=True)
            paths = [v.install_path for v in volumes]
        if not paths:  # never recorded yet: its disks as libvirt names them
            paths = [d.path for d in self.ctx.hv.lookup(vm.uuid).disks if d.path]
        lowest, where = 100.0, ""
        for directory in sorted({os.path.dirname(p) for p in paths}):
            free, total = self._usage(directory)
            percent = 100.0 * free / total if total else 0.0
            if not where or percent < lowest:
                lowest, where = percent, directory
        return lowest, where
