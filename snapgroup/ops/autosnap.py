"""One snapshot-policy pass (`snapgroup autosnap`): for every VM under a policy, take a
group when a slot is due, then prune that VM's policy-made groups beyond the keep counts.

Written against AutosnapPort, the little it needs from the engine, so it is tested with
fakes and wired to the real context by the facade. Rules:
- prune only after the VM's create succeeded (or when nothing was due, or the space
  guard refused it): a failed create never leaves a VM with fewer restore points;
- VMs in parallel, bounded; a busy VM is waited for (`wait` seconds per operation) and
  then reported; one VM's failure never stops the others; every VM a policy names is
  reported, including one that does not exist;
- dry-run: the same plan, nothing changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from snapgroup.domain.errors import Busy, InternalError, NotFound, OperationError, SnapgroupError
from snapgroup.domain.retention import (
    AutoGroup,
    Policy,
    Take,
    VmRef,
    combined_consistency,
    combined_min_free,
    combined_with_memory,
    plan_prune,
    plan_take,
    utc,
)

DEFAULT_PARALLEL = 4
DEFAULT_WAIT = 60.0  # seconds a busy VM is waited for, per operation
DRY_RUN_UUID = "(new)"


class AutosnapPort(Protocol):
    """What a pass needs from the engine. Calls for different VMs come from different
    threads at once; calls for one VM never overlap."""

    def vms(self) -> Sequence[VmRef]:
        """Every VM the host knows."""
        ...

    def groups(self, vm: VmRef) -> Sequence[AutoGroup]:
        """All the VM's groups, with their policy marks, protection, and whether a clone
        reads them."""
        ...

    def create(
        self, vm: VmRef, take: Take, *, consistency: str, wait: float, with_memory: bool = False
    ) -> AutoGroup:
        """Take the group `take` names, marked with its policies and label, in one
        operation (`with_memory`: a memory group). Waits `wait` seconds for the VM's
        lock, then raises Busy."""
        ...

    def delete(self, group_uuid: str, *, wait: float) -> None:
        """Delete a group (the engine's delete: refuses a protected one). Waits `wait`
        seconds for the VM's lock, then raises Busy."""
        ...

    def free_percent(self, vm: VmRef) -> tuple[float, str]:
        """The lowest free space (percent) over the filesystems holding the VM's disk
        files, and that filesystem's directory."""
        ...

    # Optional, looked up with getattr (a port may lack them):
    # export(vm, group): after a successful create, export the group where its policies
    #   say (export_to; issue 15); raises on failure, which fails the VM's entry.
    # plan_delete(group_uuid) -> dict | None: dry-run, the delete's own plan of a group
    #   that would be pruned (ops/delete_plan.py).


OK, FAILED, BUSY = "ok", "failed", "busy"


@dataclass
class VmReport:
    vm: VmRef
    policies: list[str]
    dry_run: bool
    due: list[str] = field(default_factory=list)  # the slot kinds due
    taken: AutoGroup | None = None  # dry-run: the group that would be taken
    pruned: list[AutoGroup] = field(default_factory=list)  # dry-run: would be
    error: SnapgroupError | None = None  # why no group was taken, or the pass failed
    prune_errors: list[tuple[AutoGroup, SnapgroupError]] = field(default_factory=list)
    export_error: SnapgroupError | None = None
    prune_plans: list[dict[str, Any]] = field(default_factory=list)  # dry-run

    @property
    def state(self) -> str:
        if isinstance(self.error, Busy) or any(isinstance(e, Busy) for _, e in self.prune_errors):
            return BUSY
        return FAILED if self.error or self.prune_errors or self.export_error else OK

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": {"uuid": self.vm.uuid, "name": self.vm.name},
            "policies": self.policies,
            "state": self.state,
            "dryRun": self.dry_run,
            "due": self.due,
            "taken": _group_json(self.taken) if self.taken else None,
            "pruned": [_group_json(g) for g in self.pruned],
            "error": self.error.to_dict() if self.error else None,
            "pruneErrors": [
                {"group": _group_json(g), "error": e.to_dict()} for g, e in self.prune_errors
            ],
            "exportError": self.export_error.to_dict() if self.export_error else None,
            "prunePlans": self.prune_plans,
        }


def _group_json(g: AutoGroup) -> dict[str, Any]:
    return {"uuid": g.uuid, "name": g.name, "createDate": g.taken.isoformat()}


@dataclass
class PassReport:
    now: datetime
    dry_run: bool
    vms: list[VmReport]

    @property
    def exit_status(self) -> int:
        """0 only when every VM is fine."""
        return 0 if all(r.state == OK for r in self.vms) else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "now": utc(self.now).isoformat(),
            "dryRun": self.dry_run,
            "ok": self.exit_status == 0,
            "vms": [r.to_json() for r in self.vms],
        }


def autosnap(
    port: AutosnapPort,
    policies: Sequence[Policy],
    *,
    now: datetime,
    dry_run: bool = False,
    parallel: int = DEFAULT_PARALLEL,
    wait: float = DEFAULT_WAIT,
) -> PassReport:
    """One pass over every VM under a policy, in the order the host lists them (a VM
    a policy names but the host lacks: a failed entry at the end)."""
    known = list(port.vms())
    work = [(vm, [p for p in policies if p.covers(vm.uuid, vm.name)]) for vm in known]
    work = [(vm, mine) for vm, mine in work if mine]
    reports: list[VmReport] = []
    workers = max(1, min(parallel, len(work)))
    if workers == 1:  # in this thread (a store bound to its thread works too)
        reports = [
            _guarded(port, vm, mine, now=now, dry_run=dry_run, wait=wait) for vm, mine in work
        ]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(_guarded, port, vm, mine, now=now, dry_run=dry_run, wait=wait)
                for vm, mine in work
            ]
            reports = [f.result() for f in futures]
    ids = {i for vm in known for i in (vm.uuid, vm.name)}
    for p in policies:
        for missing in (v for v in p.vms or () if v not in ids):
            report = VmReport(VmRef("", missing), [p.name], dry_run)
            report.error = NotFound(f"policy {p.name}: no VM named {missing!r} on this host")
            reports.append(report)
    return PassReport(now, dry_run, reports)


def _guarded(
    port: AutosnapPort,
    vm: VmRef,
    policies: list[Policy],
    *,
    now: datetime,
    dry_run: bool,
    wait: float,
) -> VmReport:
    report = VmReport(vm, [p.name for p in policies], dry_run)
    try:
        _one_vm(port, report, policies, now=now, wait=wait)
    except SnapgroupError as exc:
        report.error = report.error or exc
    except Exception as exc:  # a bug for one VM must not cost the others their pass
        report.error = report.error or InternalError(f"VM {vm.name}: {exc!r}")
    return report


def _one_vm(
    port: AutosnapPort, report: VmReport, policies: list[Policy], *, now: datetime, wait: float
) -> None:
    vm = report.vm
    groups = list(port.groups(vm))
    take = plan_take(now, policies, groups)
    if take is not None:
        report.due = [str(k) for k in take.slots]
        refused = _space_refusal(port, vm, policies)
        if refused is not None:
            report.error = refused  # a failure; pruning still runs (it frees space)
        elif report.dry_run:
            report.taken = AutoGroup(DRY_RUN_UUID, now, frozenset(take.policies), name=take.name)
            groups.append(report.taken)
        else:
            consistency = combined_consistency(policies)
            memory = combined_with_memory(policies)
            if memory:  # a memory group is never frozen (memory_state.memory_consistency)
                consistency = "crash"
            # on failure this raises out: no prune after a failed create
            report.taken = port.create(
                vm, take, consistency=consistency, wait=wait, with_memory=memory
            )
            groups.append(report.taken)
            export = getattr(port, "export", None)
            if export is not None:
                try:
                    export(vm, report.taken)
                except SnapgroupError as exc:  # the group stays; pruning goes on
                    report.export_error = exc
    planner = getattr(port, "plan_delete", None) if report.dry_run else None
    for g in plan_prune(policies, groups):
        if report.dry_run:
            report.pruned.append(g)
            if planner is not None and (plan := planner(g.uuid)) is not None:
                report.prune_plans.append(plan)
            continue
        try:
            port.delete(g.uuid, wait=wait)
        except NotFound:
            continue  # deleted meanwhile: nothing left to prune
        except SnapgroupError as exc:
            report.prune_errors.append((g, exc))
            if isinstance(exc, Busy):
                break  # the VM stays busy: the next pass prunes the rest
            continue
        report.pruned.append(g)


def _space_refusal(port: AutosnapPort, vm: VmRef, policies: list[Policy]) -> SnapgroupError | None:
    minimum = combined_min_free(policies)
    if minimum is None:
        return None
    free, where = port.free_percent(vm)
    if free >= minimum:
        return None
    return OperationError(
        f"VM {vm.name}: {free:.1f}% free on {where}, below the policy's "
        f"--min-free-percent {minimum:g}: no group taken"
    )
