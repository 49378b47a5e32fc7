"""Revert, deleting one snapshot and deleting in a tree, killed at every named step
(simulated: a BaseException at the checkpoint), then `recover`."""

from __future__ import annotations

import pytest

from snapgroup.domain.models import VmState
from tests.unit.conftest import Killed, Lab
from tests.unit.test_lifecycle import _tree, assert_whole, history, views

REVERT_STEPS = [
    "revert:begin",
    "revert:safety",
    "revert:overlays",
    "revert:switched",
    "revert:removed",
]


ROLLED_FORWARD = {"revert:switched", "revert:removed"}
TREE_DELETE_STEPS = [
    "delete:begin",
    "delete:rebase",
    "delete:rebased",
    "delete:merge",
    "delete:committed",
    "delete:merged",
    "delete:removed",
]


# Without a safety group there is no revert:safety step to be killed at.
REVERT_CASES = [
    *(pytest.param(step, True, id=f"safety-{step}") for step in REVERT_STEPS),
    *(
        pytest.param(step, False, id=f"no-safety-{step}")
        for step in REVERT_STEPS
        if step != "revert:safety"
    ),
]


@pytest.mark.parametrize(("step", "safety"), REVERT_CASES)
def test_revert_killed_at_every_step(lab: Lab, die_at: list[str], step: str, safety: bool) -> None:
    groups = history(lab)
    now = lab.view_of_vm()
    saved = {g.uuid: views(lab, g) for g in groups}
    die_at.append(step)
    with pytest.raises(Killed):
        lab.engine.revert(groups[0].uuid, safety_group=safety)
    recovered = {op.kind: op.state for op in lab.engine.recover()}
    forward = step in ROLLED_FORWARD
    assert recovered["revert"] == ("done" if forward else "rolled-back")
    assert lab.view_of_vm() == (saved[groups[0].uuid] if forward else now)
    for g in groups:
        assert views(lab, g) == saved[g.uuid]
    if safety and step not in ("revert:begin", "revert:safety"):
        (safety_group,) = [g for g in lab.engine.list_groups() if g.name.startswith("before")]
        assert views(lab, safety_group) == now
    assert_whole(lab)
    assert lab.engine.recover() == []


@pytest.mark.parametrize("state", [VmState.RUNNING, VmState.STOPPED])
@pytest.mark.parametrize("step", TREE_DELETE_STEPS)
def test_tree_delete_killed_at_every_step(
    lab: Lab, die_at: list[str], state: VmState, step: str
) -> None:
    groups, safety = _tree(lab, state)
    everything = [*groups, safety]
    saved = {g.uuid: views(lab, g) for g in everything}
    now = lab.view_of_vm()
    die_at.append(step)
    if step == "delete:committed" and state.is_live:
        lab.engine.delete(groups[0].uuid)  # live: libvirt commits, no such step
        return
    with pytest.raises(Killed):
        lab.engine.delete(groups[0].uuid)  # g0: one child rebased, one committed
    lab.engine.recover()
    assert [g.uuid for g in lab.engine.list_groups()] == [g.uuid for g in everything[1:]]
    assert lab.view_of_vm() == now
    for g in everything[1:]:
        assert views(lab, g) == saved[g.uuid]
    assert_whole(lab)


@pytest.mark.parametrize(
    "step",
    [
        "delete-snapshot:begin",
        "delete-snapshot:merge",
        "delete-snapshot:committed",
        "delete-snapshot:merged",
        "delete-snapshot:removed",
    ],
)
def test_single_snapshot_delete_killed_at_every_step(
    lab: Lab, die_at: list[str], step: str
) -> None:
    groups = history(lab)
    now = lab.view_of_vm()
    saved = {g.uuid: views(lab, g) for g in groups}
    victim = groups[0].refs[0]
    die_at.append(step)
    with pytest.raises(Killed):
        lab.engine.delete_snapshot(victim.volume_snapshot_uuid)
    (op,) = lab.engine.recover()
    assert (op.kind, op.state) == ("delete-snapshot", "done")
    assert lab.engine.get(groups[0].uuid).refs[0].snapshot_deleted
    assert lab.view_of_vm() == now
    for g in groups[1:]:
        assert views(lab, g) == saved[g.uuid]
    assert_whole(lab)


def test_sync_finishes_a_dead_operation_before_looking(lab: Lab, die_at: list[str]) -> None:
    """An API caller that never ran `recover`: a create died after switching the disks.
    Synced over, the overlays would become new volumes; finished first, they are not."""
    from snapgroup.store.operations import OperationRepo
    from snapgroup.store.repo import Repo

    groups = history(lab, n=1)
    die_at.append("create:switched")
    with pytest.raises(Killed):
        lab.engine.create(vm="vm1", name="g1")
    with lab.engine.db.transaction() as session:
        (op,) = OperationRepo(session).unfinished(host=lab.engine.journal.host)
        op.pid = 1  # another process's, dead: its lock is free
        session.add(op)
    assert lab.engine.check([groups[0].uuid])[0].available
    assert lab.engine.operations()[0].state == "done"
    assert len(lab.engine.list_groups()) == 2
    with lab.engine.db.transaction() as session:
        assert len(Repo(session).volumes_of_vm("a" * 32)) == 3
    assert_whole(lab)
