"""SIGKILL `snapgroup revert` at every named step, then `snapgroup recover`: the VM is
either wholly on the group's point in time (rolled forward, once the domain was switched)
or wholly as before (rolled back); metadata, domain, every chain of the tree and every
restore point are whole, and no file is left over."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.testing.labvm import LabVm
from tests.lab.test_fault_recovery import TARGETS, _kill_then_recover
from tests.lab.test_group_life import (
    assert_points_kept,
    assert_tree_whole,
    save_views,
    tops,
    write,
)
from tests.lab.tools import same

pytestmark = pytest.mark.lab
STEPS = ["revert:begin", "revert:safety", "revert:overlays", "revert:switched", "revert:removed"]
FORWARD = {"revert:switched", "revert:removed"}


@pytest.mark.parametrize(
    ("step", "safety"),
    # Without a safety group only the roll forward differs (the old top holds data).
    [(s, True) for s in STEPS] + [(s, False) for s in STEPS[3:]],
    ids=[f"{s}-safety" for s in STEPS] + [f"{s}-no-safety" for s in STEPS[3:]],
)
def test_revert_killed_at_every_step(
    engine: Engine, stopped_vm: LabVm, step: str, safety: bool, tmp_path: Path
) -> None:
    vm = stopped_vm
    groups = []
    for k in range(2):
        write(vm, 0x60 + k, 0)
        write(vm, 0x70 + k, 1 + k)
        groups.append(engine.create(vm=vm.name, name=f"g{k}"))
    write(vm, 0x6F, 0)
    saved = save_views(engine, vm, tmp_path / "saved")

    args = ["revert", groups[0].uuid, *([] if safety else ["--no-safety-group"])]
    state = _kill_then_recover(engine.db.url, step, *args)

    forward = step in FORWARD
    assert state == ("done" if forward else "rolled-back")
    now = tops(vm)
    for ref, target in zip(groups[0].refs, TARGETS, strict=True):
        expected = saved[ref.volume_snapshot_uuid] if forward else saved[f"now-{target}"]
        assert same(expected, now[target]), target
    assert_points_kept(engine, saved)
    safety_groups = [g for g in engine.list_groups() if g.name.startswith("before revert")]
    if safety and step not in ("revert:begin", "revert:safety"):
        (taken,) = safety_groups
        for ref, target in zip(taken.refs, TARGETS, strict=True):
            assert same(saved[f"now-{target}"], ref.install_path)  # nothing lost
    else:
        assert safety_groups == []
    assert_tree_whole(engine, vm)
    if forward:
        vm.start()  # libvirt boots the chain recovery switched to
        vm.stop()


@pytest.mark.parametrize(
    ("step", "live"),
    [("delete:rebase", False), ("delete:rebased", True)],
    ids=["offline-delete:rebase", "live-delete:rebased"],
)
def test_tree_delete_killed_at_the_rebase_steps(
    engine: Engine, stopped_vm: LabVm, step: str, live: bool, tmp_path: Path
) -> None:
    """After a revert to g0, g0's snapshots have two children: deleting g0 rebases the
    one off the VM's branch (a safe qemu-img rebase), then commits the other."""
    vm = stopped_vm
    groups = []
    for k in range(2):
        write(vm, 0x60 + k, 0)
        groups.append(engine.create(vm=vm.name, name=f"g{k}"))
    assert engine.revert(groups[0].uuid, safety_group=False).error is None
    if live:
        vm.start()
    saved = save_views(engine, vm, tmp_path / "saved", live=live)

    state = _kill_then_recover(engine.db.url, step, "delete", groups[0].uuid)

    assert state == "done"
    assert [g.uuid for g in engine.list_groups()] == [groups[1].uuid]
    for target, path in tops(vm, live=live).items():
        assert same(saved[f"now-{target}"], path), target
    assert_points_kept(engine, saved)
    assert_tree_whole(engine, vm, live=live)
