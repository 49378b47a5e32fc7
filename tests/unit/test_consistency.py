"""--consistency application|crash|auto on fakes: the freeze holds only the switch, the
guest is thawed on every path, and every fallback is recorded with its reason."""

from __future__ import annotations

import pytest

from snapgroup.domain.errors import HypervisorError, InvalidArgument, OperationError, Timeout
from snapgroup.domain.models import VmState
from snapgroup.ops.consistency import Consistency, FreezeWindow, thaw_with_retries
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool, lab_domain
from tests.unit.conftest import Killed, Lab

VM = "a" * 32
MOUNTS = ("/", "/mnt/data1", "/mnt/data2")


def with_agent(lab: Lab, state: VmState = VmState.RUNNING) -> list[str]:
    paths = lab_domain(lab.hv, state=state)
    lab.hv.agents[VM] = MOUNTS
    return paths


def order(lab: Lab) -> list[str]:
    """The hypervisor calls that matter here, in order."""
    wanted = {"guest_filesystems", "freeze", "snapshot_disks", "set_disk_sources", "thaw"}
    return [name for name, _ in lab.hv.calls if name in wanted]


def assert_nothing_changed(lab: Lab, paths: list[str]) -> None:
    assert [d.path for d in lab.hv.domains[VM].disks] == paths
    assert set(lab.images.images) == set(paths)  # no overlay left behind
    assert lab.engine.list_groups() == []
    assert [op.state for op in lab.engine.operations()] == ["failed"]


# -- the three modes ---------------------------------------------------------------------


def test_auto_with_an_agent_freezes_around_the_one_switch(lab: Lab) -> None:
    with_agent(lab)
    group = lab.engine.create(vm="vm1", name="g")

    assert order(lab) == ["guest_filesystems", "freeze", "snapshot_disks", "thaw"]
    assert lab.hv.frozen == set()
    inventory = group.to_inventory()
    assert inventory["consistencyType"] == "Application"
    assert inventory["frozenFilesystems"] == list(MOUNTS)
    assert isinstance(inventory["freezeMillis"], int) and inventory["freezeMillis"] >= 0
    assert inventory["consistencyNote"] is None
    assert lab.engine.get(group.uuid).to_inventory() == inventory  # as stored
    steps = [op.step for op in lab.engine.operations()]
    assert steps == ["switched"]  # the last step journaled (after freezing, thawed)


def test_overlays_are_made_before_the_freeze(lab: Lab) -> None:
    with_agent(lab)
    made: list[str] = []
    original = lab.images.create_overlay

    def record(path: str, **kwargs: object) -> None:
        made.append("frozen" if lab.hv.frozen else "thawed")
        original(path, **kwargs)  # type: ignore[arg-type]

    lab.images.create_overlay = record  # type: ignore[method-assign]
    lab.engine.create(vm="vm1", name="g")
    assert made == ["thawed"] * 3


def test_auto_without_an_agent_is_crash_consistent_and_says_why(lab: Lab) -> None:
    lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="g")

    assert order(lab) == ["guest_filesystems", "snapshot_disks"]  # no freeze, no thaw
    inventory = group.to_inventory()
    assert inventory["consistencyType"] == "Crash"
    assert inventory["frozenFilesystems"] == []
    assert inventory["freezeMillis"] is None
    assert inventory["consistencyNote"] == (
        "crash-consistent fallback: guest agent unavailable (argument unsupported: "
        "QEMU guest agent is not configured)"
    )


def test_auto_falls_back_when_the_agent_times_out_and_still_thaws(lab: Lab) -> None:
    with_agent(lab)
    lab.hv.fail["freeze"] = Timeout("Guest agent is not responding: timed out")
    group = lab.engine.create(vm="vm1", name="g")

    # A freeze that timed out may complete in the guest later: thawed before the switch.
    assert order(lab) == ["guest_filesystems", "freeze", "thaw", "snapshot_disks"]
    assert group.consistency_type == "Crash"
    assert group.consistency_note == (
        "crash-consistent fallback: freeze failed (Guest agent is not responding: timed out)"
    )


def test_crash_never_asks_the_agent(lab: Lab) -> None:
    with_agent(lab)
    group = lab.engine.create(vm="vm1", name="g", consistency="crash")
    assert order(lab) == ["snapshot_disks"]
    assert (group.consistency_type, group.consistency_note) == ("Crash", None)


def test_application_without_an_agent_fails_and_changes_nothing(lab: Lab) -> None:
    paths = lab_domain(lab.hv)
    with pytest.raises(OperationError, match="no application-consistent snapshot: guest agent"):
        lab.engine.create(vm="vm1", name="g", consistency=Consistency.APPLICATION)
    assert order(lab) == ["guest_filesystems"]
    assert_nothing_changed(lab, paths)


def test_application_whose_freeze_fails_thaws_and_changes_nothing(lab: Lab) -> None:
    paths = with_agent(lab)
    lab.hv.fail["freeze"] = HypervisorError("guest-fsfreeze-freeze failed: Device busy")
    with pytest.raises(OperationError, match=r"freeze failed .*Device busy"):
        lab.engine.create(vm="vm1", name="g", consistency="application")
    assert order(lab) == ["guest_filesystems", "freeze", "thaw"]
    assert_nothing_changed(lab, paths)


@pytest.mark.parametrize("state", [VmState.STOPPED, VmState.PAUSED])
def test_a_vm_that_cannot_be_frozen(lab: Lab, state: VmState) -> None:
    paths = with_agent(lab, state)
    group = lab.engine.create(vm="vm1", name="g")  # auto
    assert order(lab)[0] != "freeze" and "freeze" not in order(lab)
    assert group.consistency_type == "Crash"
    assert group.consistency_note is not None
    assert f"VM {state.value.lower()}" in group.consistency_note

    lab.hv.calls.clear()
    with pytest.raises(OperationError, match=f"VM {state.value.lower()}"):
        lab.engine.create(vm="vm1", name="g2", consistency="application")
    assert order(lab) == []
    assert len(lab.engine.list_groups()) == 1
    assert paths  # (the first group moved the disks; the refused one did not)


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="consistency 'sometimes'"):
        Consistency.parse("sometimes")
    assert Consistency.parse("APPLICATION") is Consistency.APPLICATION


# -- thaw on every path ------------------------------------------------------------------


def test_thaw_runs_even_when_the_switch_fails(lab: Lab) -> None:
    paths = with_agent(lab)
    lab.hv.fail["snapshot_disks"] = HypervisorError("snapshot refused")
    with pytest.raises(HypervisorError, match="snapshot refused"):
        lab.engine.create(vm="vm1", name="g", consistency="application")
    assert order(lab) == ["guest_filesystems", "freeze", "snapshot_disks", "thaw"]
    assert lab.hv.frozen == set()
    assert [d.path for d in lab.hv.domains[VM].disks] == paths
    assert set(lab.images.images) == set(paths)
    assert lab.engine.list_groups() == []


def test_a_failing_thaw_is_retried() -> None:
    images = FakeImageTool()
    hv = FakeHypervisor(images)
    lab_domain(hv)
    hv.agents[VM] = MOUNTS
    hv.freeze(VM)
    hv.fail["thaw"] = HypervisorError("agent busy")
    hv.fail_times["thaw"] = 2
    pauses: list[float] = []

    thawed, error = thaw_with_retries(hv, VM, timeout=5, sleep=pauses.append)

    assert (thawed, error) == (3, None)
    assert len(hv.called("thaw")) == 3 and len(pauses) == 2
    assert hv.frozen == set()


def test_a_thaw_that_keeps_failing_is_reported_in_the_group(lab: Lab) -> None:
    with_agent(lab)
    lab.hv.fail["thaw"] = HypervisorError("agent gone")
    group = lab.engine.create(vm="vm1", name="g")  # the snapshot itself was taken

    assert len(lab.hv.called("thaw")) == 3
    assert group.consistency_type == "Application"
    assert group.consistency_note is not None
    assert group.consistency_note.startswith("THAW FAILED after 3 attempts (agent gone)")
    assert "virsh domfsthaw vm1" in group.consistency_note


def test_a_failing_thaw_after_a_failing_switch_is_in_the_error() -> None:
    images = FakeImageTool()
    hv = FakeHypervisor(images)
    lab_domain(hv)
    hv.agents[VM] = MOUNTS
    hv.fail["thaw"] = HypervisorError("agent gone")
    window = FreezeWindow(hv, hv.lookup(VM), Consistency.AUTO, sleep=lambda _s: None)
    with pytest.raises(OperationError) as raised, window:
        raise HypervisorError("snapshot refused")
    assert "snapshot refused" in raised.value.details
    assert "could not be thawed (agent gone)" in raised.value.details
    assert isinstance(raised.value.cause, HypervisorError)


# -- recovery: a process killed inside the freeze window --------------------------------


@pytest.mark.parametrize(
    ("step", "frozen", "state", "expected"),
    [
        ("create:freezing", False, "rolled-back", None),  # journaled, not yet frozen
        ("create:frozen", True, "rolled-back", None),
        ("create:thawing", True, "done", "Crash"),  # switched while frozen: not proven
        ("create:thawed", False, "done", "Application"),  # journaled after the thaw
        ("create:switched", False, "done", "Application"),
    ],
)
def test_recover_thaws_a_guest_left_frozen(
    lab: Lab, die_at: list[str], step: str, frozen: bool, state: str, expected: str | None
) -> None:
    paths = with_agent(lab)
    die_at.append(step)
    with pytest.raises(Killed):
        lab.engine.create(vm="vm1", name="g", consistency="application")
    # The simulated kill still ran the window's `finally` (its thaw); a SIGKILL runs
    # none: put the guest back the way a real kill at that step leaves it.
    if frozen:
        lab.hv.frozen.add(VM)
    lab.hv.calls.clear()

    (op,) = lab.engine.recover()

    assert op.state == state
    assert lab.hv.frozen == set()
    groups = lab.engine.list_groups()
    thawed = f"thawed {3 if frozen else 0} filesystem(s) left frozen"
    if expected is None:
        assert groups == []
        assert [d.path for d in lab.hv.domains[VM].disks] == paths
        assert lab.hv.called("thaw")  # the journal said "freezing": recover thawed
        assert op.detail is not None and thawed in op.detail
        return
    (group,) = groups
    assert group.consistency_type == expected
    if expected == "Crash":
        assert lab.hv.called("thaw")
        assert group.consistency_note == (
            "recovered after a create interrupted inside the freeze window, so application "
            f"consistency is not proven; {thawed}"
        )
    else:
        assert lab.hv.called("thaw") == []  # the create had thawed and journaled it
        assert group.frozen_filesystems == MOUNTS
