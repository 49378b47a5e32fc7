"""A process that dies at any named step leaves a state `recover` makes whole.

Here the death is simulated by raising a BaseException at the checkpoint (the lab tests
do it for real with SIGKILL)."""

from __future__ import annotations

import pytest

from snapgroup.domain.models import VmState
from snapgroup.domain.planner import expected_chain
from snapgroup.store.repo import Repo
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Killed, Lab

VM = "a" * 32
CREATE_STEPS = ["create:begin", "create:overlays", "create:switched"]
DELETE_STEPS = [
    "delete:begin",
    "delete:merge",
    "delete:committed",
    "delete:merged",
    "delete:removed",
]


def assert_consistent(lab: Lab) -> None:
    """Metadata matches the domain and every chain; no orphan files; nothing running."""
    engine = lab.engine
    with engine.db.transaction() as session:
        repo = Repo(session)
        volumes = repo.volumes_of_vm(VM, attached_only=True)
        in_use: set[str] = set()
        for volume in volumes:
            assert lab.hv.disk_path(VM, volume.target) == volume.install_path
            chain = [layer.path for layer in lab.images.chain(volume.install_path)]
            assert chain == expected_chain(volume, repo.snapshots_of_volume(volume.uuid))
            in_use.update(chain)
    assert set(lab.images.images) == in_use
    assert [op.state for op in engine.operations() if op.state == "running"] == []
    assert engine.recover() == []  # idempotent: nothing left to do


def _history(lab: Lab, state: VmState) -> list[str]:
    lab_domain(lab.hv, state=state)
    groups = []
    for n in range(2):
        for disk in lab.hv.domains[VM].disks:
            assert disk.path
            lab.images.write(disk.path, n, f"{disk.target}@{n}")
        groups.append(lab.engine.create(vm="vm1", name=f"g{n}").uuid)
    return groups


@pytest.mark.parametrize("state", [VmState.RUNNING, VmState.STOPPED])
@pytest.mark.parametrize("step", CREATE_STEPS)
def test_create_killed_at_any_step_recovers(
    lab: Lab, die_at: list[str], state: VmState, step: str
) -> None:
    groups = _history(lab, state)
    current = lab.view_of_vm()
    die_at.append(step)
    with pytest.raises(Killed):
        lab.engine.create(vm="vm1", name="g2")
    (recovered,) = lab.engine.recover()
    assert recovered.kind == "create"
    listed = [g.uuid for g in lab.engine.list_groups()]
    # after the switch the snapshot exists: recovery keeps it; before, it rolls back
    assert listed[:2] == groups and len(listed) == (3 if step == "create:switched" else 2)
    assert lab.view_of_vm() == current
    assert_consistent(lab)


@pytest.mark.parametrize("state", [VmState.RUNNING, VmState.STOPPED])
@pytest.mark.parametrize("step", DELETE_STEPS)
@pytest.mark.parametrize("victim", [0, 1])
def test_delete_killed_at_any_step_recovers(
    lab: Lab, die_at: list[str], state: VmState, step: str, victim: int
) -> None:
    groups = _history(lab, state)
    current = lab.view_of_vm()
    survivor = groups[1 - victim]
    survivor_views = [lab.images.read(r.install_path) for r in lab.engine.get(survivor).refs]
    die_at.append(step)
    if step == "delete:committed" and state.is_live:
        lab.engine.delete(groups[victim])  # live merges have no such step
        return
    with pytest.raises(Killed):
        lab.engine.delete(groups[victim])
    lab.engine.recover()
    assert [g.uuid for g in lab.engine.list_groups()] == [survivor]
    assert lab.view_of_vm() == current
    refs = lab.engine.get(survivor).refs
    assert [lab.images.read(r.install_path) for r in refs] == survivor_views
    assert_consistent(lab)


def test_recover_leaves_an_operation_whose_process_holds_the_lock(lab: Lab) -> None:
    _history(lab, VmState.RUNNING)
    op = lab.engine.journal.begin("create", VM, {"overlays": []})
    with lab.engine.ctx.locks.vm(VM):
        assert lab.engine.recover() == []
    assert [r.uuid for r in lab.engine.recover()] == [op]
