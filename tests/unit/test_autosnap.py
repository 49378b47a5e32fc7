"""The autosnap pass (snapgroup/ops/autosnap.py) against a fake port: what it takes,
what it prunes and when, busy and failing VMs, the space guard, dry-run, parallelism."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from snapgroup.domain.errors import Busy, HypervisorError, NotFound, OperationError
from snapgroup.domain.retention import AutoGroup, Policy, Retention, Take
from snapgroup.ops.autosnap import BUSY, FAILED, OK, VmRef, autosnap

NOW = datetime(2026, 12, 1, 14, 0, 20, tzinfo=UTC)
HOURLY = Policy("hourly", Retention(hourly=2))


@dataclass
class FakePort:
    vm_list: list[VmRef]
    groups_by_vm: dict[str, list[AutoGroup]] = field(default_factory=dict)
    free: dict[str, float] = field(default_factory=dict)
    fail_create: dict[str, Exception] = field(default_factory=dict)
    fail_delete: dict[str, Exception] = field(default_factory=dict)
    create_seconds: float = 0.0
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    memory: list[bool] = field(default_factory=list)  # with_memory of each create
    running: int = 0
    most_running: int = 0
    guard: threading.Lock = field(default_factory=threading.Lock)
    seq: int = 0
    now: datetime = NOW  # the engine's clock: a created group's time

    def __post_init__(self) -> None:
        for vm in self.vm_list:
            self.groups_by_vm.setdefault(vm.uuid, [])
            self.locks[vm.uuid] = threading.Lock()

    def vms(self) -> Sequence[VmRef]:
        return self.vm_list

    def groups(self, vm: VmRef) -> Sequence[AutoGroup]:
        return list(self.groups_by_vm[vm.uuid])

    @contextmanager
    def _locked(self, vm_uuid: str, wait: float) -> Iterator[None]:
        lock = self.locks[vm_uuid]
        if not lock.acquire(timeout=wait):
            raise Busy(f"another snapgroup operation on VM {vm_uuid} is in progress")
        try:
            yield
        finally:
            lock.release()

    def create(
        self, vm: VmRef, take: Take, *, consistency: str, wait: float, with_memory: bool = False
    ) -> AutoGroup:
        with self.guard:
            self.calls.append(("create", vm.name))
            self.memory.append(with_memory)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            with self._locked(vm.uuid, wait):
                time.sleep(self.create_seconds)
                if vm.uuid in self.fail_create:
                    raise self.fail_create[vm.uuid]
                with self.guard:
                    self.seq += 1
                    g = AutoGroup(
                        f"new{self.seq}", self.now, frozenset(take.policies), name=take.name
                    )
                self.groups_by_vm[vm.uuid].append(g)
                return g
        finally:
            with self.guard:
                self.running -= 1

    def delete(self, group_uuid: str, *, wait: float) -> None:
        vm_uuid = next(
            v for v, gs in self.groups_by_vm.items() if any(g.uuid == group_uuid for g in gs)
        )
        with self.guard:
            self.calls.append(("delete", group_uuid))
        with self._locked(vm_uuid, wait):
            if group_uuid in self.fail_delete:
                raise self.fail_delete[group_uuid]
            self.groups_by_vm[vm_uuid] = [
                g for g in self.groups_by_vm[vm_uuid] if g.uuid != group_uuid
            ]

    def free_percent(self, vm: VmRef) -> tuple[float, str]:
        return self.free.get(vm.uuid, 50.0), "/var/lib/libvirt/images"


def _vm(i: int) -> VmRef:
    return VmRef(f"{i:032x}", f"vm{i}")


def _aged(vm: VmRef, hours: int = 3, policy: str = "hourly") -> list[AutoGroup]:
    """Policy groups at NOW-hours ... NOW-1h, one an hour."""
    return [
        AutoGroup(f"{vm.name}-{h}", NOW - timedelta(hours=h), frozenset({policy}), name=f"g{h}")
        for h in range(hours, 0, -1)
    ]


def test_a_pass_takes_what_is_due_then_prunes_and_a_second_pass_does_nothing() -> None:
    vm = _vm(1)
    port = FakePort([vm, _vm(2)], {vm.uuid: _aged(vm)})
    report = autosnap(port, [Policy("hourly", Retention(hourly=2), vms=("vm1",))], now=NOW)
    assert report.exit_status == 0
    (r,) = report.vms  # vm2 is under no policy: not in the pass
    assert r.state == OK and r.due == ["hourly"]
    assert r.taken is not None and r.taken.name == "auto-hourly-2026-12-01T14:00Z"
    assert r.taken.policies == {"hourly"}
    assert [g.uuid for g in r.pruned] == ["vm1-3", "vm1-2"]
    assert [g.uuid for g in port.groups_by_vm[vm.uuid]] == ["vm1-1", r.taken.uuid]
    assert port.calls[0] == ("create", "vm1")  # the create came before any delete
    again = autosnap(port, [HOURLY], now=NOW + timedelta(minutes=15))
    assert again.exit_status == 0
    assert [(x.vm.name, x.taken is None, x.pruned) for x in again.vms] == [
        ("vm1", True, []),
        ("vm2", False, []),  # HOURLY covers every VM: vm2's first group
    ]


def test_a_failed_create_prunes_nothing_and_stops_no_other_vm() -> None:
    bad, good = _vm(1), _vm(2)
    port = FakePort([bad, good], {bad.uuid: _aged(bad), good.uuid: _aged(good)})
    port.fail_create[bad.uuid] = HypervisorError("snapshot refused")
    report = autosnap(port, [HOURLY], now=NOW)
    assert report.exit_status == 1
    by = {r.vm.name: r for r in report.vms}
    assert by["vm1"].state == FAILED and by["vm1"].pruned == []
    assert isinstance(by["vm1"].error, HypervisorError)
    assert len(port.groups_by_vm[bad.uuid]) == 3  # every restore point still there
    assert by["vm2"].state == OK and len(by["vm2"].pruned) == 2
    doc = report.to_json()
    assert doc["ok"] is False
    assert doc["vms"][0]["error"]["code"] == "HOST.1002"
    assert doc["vms"][0]["state"] == "failed"


def test_an_unexpected_exception_is_one_vms_internal_error() -> None:
    bad, good = _vm(1), _vm(2)
    port = FakePort([bad, good])
    port.fail_create[bad.uuid] = RuntimeError("boom")
    report = autosnap(port, [HOURLY], now=NOW)
    by = {r.vm.name: r for r in report.vms}
    assert by["vm1"].error is not None and by["vm1"].error.code == "SYS.1001"
    assert "boom" in by["vm1"].error.details
    assert by["vm2"].state == OK and by["vm2"].taken is not None


def test_space_guard_refuses_the_create_but_still_prunes() -> None:
    vm = _vm(1)
    port = FakePort([vm], {vm.uuid: _aged(vm, 4)}, free={vm.uuid: 4.25})
    guarded = replace(HOURLY, min_free_percent=10)
    report = autosnap(port, [guarded], now=NOW)
    (r,) = report.vms
    assert report.exit_status == 1 and r.state == FAILED and r.taken is None
    assert isinstance(r.error, OperationError)
    assert r.error.details == (
        "VM vm1: 4.2% free on /var/lib/libvirt/images, below the policy's "
        "--min-free-percent 10: no group taken"
    )
    assert [g.uuid for g in r.pruned] == ["vm1-4", "vm1-3"]
    assert ("create", "vm1") not in port.calls
    port.free[vm.uuid] = 10.0
    assert autosnap(port, [guarded], now=NOW).exit_status == 0


def test_a_busy_vm_is_waited_for_within_the_bound() -> None:
    vm, other = _vm(1), _vm(2)
    port = FakePort([vm, other])
    port.locks[vm.uuid].acquire()  # another operation on vm1
    threading.Timer(0.3, port.locks[vm.uuid].release).start()
    started = time.monotonic()
    report = autosnap(port, [HOURLY], now=NOW, wait=5)
    assert report.exit_status == 0 and time.monotonic() - started >= 0.25
    assert all(r.taken is not None for r in report.vms)


def test_a_vm_busy_past_the_bound_is_reported_and_the_others_done() -> None:
    vm, other = _vm(1), _vm(2)
    port = FakePort([vm, other], {vm.uuid: _aged(vm)})
    port.locks[vm.uuid].acquire()
    try:
        report = autosnap(port, [HOURLY], now=NOW, wait=0.2)
    finally:
        port.locks[vm.uuid].release()
    by = {r.vm.name: r for r in report.vms}
    assert by["vm1"].state == BUSY and isinstance(by["vm1"].error, Busy)
    assert by["vm1"].pruned == [] and len(port.groups_by_vm[vm.uuid]) == 3
    assert by["vm2"].state == OK and by["vm2"].taken is not None
    assert report.exit_status == 1
    assert report.to_json()["vms"][0]["state"] == "busy"


def test_prune_failures_are_reported_and_a_group_gone_meanwhile_is_not() -> None:
    vm = _vm(1)
    port = FakePort([vm], {vm.uuid: _aged(vm, 4)})
    port.fail_delete["vm1-4"] = NotFound("deleted by hand meanwhile")
    port.fail_delete["vm1-3"] = OperationError("group vm1-3 is protected")
    (r,) = autosnap(port, [HOURLY], now=NOW).vms
    assert r.taken is not None and r.state == FAILED
    assert [g.uuid for g in r.pruned] == ["vm1-2"]
    assert [(g.uuid, e.code) for g, e in r.prune_errors] == [("vm1-3", "SYS.1006")]


def test_protected_hand_made_and_clone_read_groups_survive() -> None:
    vm = _vm(1)
    base = _aged(vm, 5)
    groups = [
        replace(base[0], protected=True),
        replace(base[1], pinned=True),
        replace(base[2], policies=frozenset()),  # by hand
        *base[3:],
    ]
    port = FakePort([vm], {vm.uuid: groups})
    (r,) = autosnap(port, [HOURLY], now=NOW).vms
    assert r.state == OK and [g.uuid for g in r.pruned] == ["vm1-2"]  # hourly=2
    port.now = later = NOW + timedelta(hours=1)
    (r,) = autosnap(port, [HOURLY], now=later).vms
    assert r.taken is not None and [g.uuid for g in r.pruned] == ["vm1-1"]
    left = [g.uuid for g in port.groups_by_vm[vm.uuid]]
    assert left == ["vm1-5", "vm1-4", "vm1-3", "new1", r.taken.uuid]


def test_dry_run_changes_nothing_and_shows_the_real_plan() -> None:
    vm, fresh = _vm(1), _vm(2)
    port = FakePort([vm, fresh], {vm.uuid: _aged(vm, 4)})
    before = {k: list(v) for k, v in port.groups_by_vm.items()}
    dry = autosnap(port, [HOURLY], now=NOW, dry_run=True)
    assert port.groups_by_vm == before and port.calls == []
    real = autosnap(port, [HOURLY], now=NOW)

    def plan(report: object) -> list[tuple[str, str | None, list[str]]]:
        return [
            (r.vm.name, r.taken.name if r.taken else None, [g.uuid for g in r.pruned])
            for r in report.vms  # type: ignore[attr-defined]
        ]

    assert plan(dry) == plan(real)
    assert dry.to_json()["dryRun"] is True and dry.vms[0].to_json()["taken"]["uuid"] == "(new)"


def test_vms_run_in_parallel_within_the_bound() -> None:
    vms = [_vm(i) for i in range(8)]
    port = FakePort(vms, create_seconds=0.2)
    started = time.monotonic()
    report = autosnap(port, [HOURLY], now=NOW, parallel=4)
    elapsed = time.monotonic() - started
    assert report.exit_status == 0 and len(report.vms) == 8
    assert port.most_running == 4
    assert elapsed < 8 * 0.2 * 0.75  # sequential would take 1.6 s
    assert [r.vm.name for r in report.vms] == [v.name for v in vms]  # the host's order


def test_a_vm_a_policy_names_but_the_host_lacks_is_reported() -> None:
    port = FakePort([_vm(1)])
    report = autosnap(port, [Policy("p", Retention(daily=1), vms=("vm1", "ghost"))], now=NOW)
    assert [(r.vm.name, r.state) for r in report.vms] == [("vm1", OK), ("ghost", FAILED)]
    ghost = report.vms[1].error
    assert ghost is not None and ghost.details == "policy p: no VM named 'ghost' on this host"
    assert report.exit_status == 1


def test_a_memory_policy_takes_memory_groups_never_frozen() -> None:
    seen: list[str] = []

    class Port(FakePort):
        def create(
            self, vm: VmRef, take: Take, *, consistency: str, wait: float, with_memory: bool = False
        ) -> AutoGroup:
            seen.append(consistency)
            return super().create(
                vm, take, consistency=consistency, wait=wait, with_memory=with_memory
            )

    port = Port([_vm(1), _vm(2)])
    policies = [
        Policy("mem", Retention(hourly=1), vms=("vm1",), with_memory=True),
        Policy("app", Retention(daily=1), consistency="application"),
    ]
    autosnap(port, policies, now=NOW)
    by_vm = dict(zip([c[1] for c in port.calls if c[0] == "create"], port.memory, strict=True))
    assert by_vm == {"vm1": True, "vm2": False}
    assert sorted(seen) == ["application", "crash"]  # vm1's memory group is not frozen


@pytest.mark.parametrize(
    ("consistencies", "expected"),
    [(["crash"], "crash"), (["crash", "auto"], "auto"), (["auto", "application"], "application")],
)
def test_the_strongest_consistency_asked_for_is_used(
    consistencies: list[str], expected: str
) -> None:
    seen: list[str] = []

    class Port(FakePort):
        def create(
            self, vm: VmRef, take: Take, *, consistency: str, wait: float, with_memory: bool = False
        ) -> AutoGroup:
            seen.append(consistency)
            return super().create(vm, take, consistency=consistency, wait=wait)

    policies = [
        Policy(f"p{i}", Retention(hourly=1), consistency=c) for i, c in enumerate(consistencies)
    ]
    autosnap(Port([_vm(1)]), policies, now=NOW)
    assert seen == [expected]
