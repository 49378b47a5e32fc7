"""A VM removed the documented way (undefined, its disks removed, `sync`) with no groups
left is forgotten: `verify` is clean again. One that still has groups, or whose disks
still sit on another VM's snapshots, keeps being reported; one whose snapshots another
VM's disks read keeps its records quietly, until that VM goes too."""

from __future__ import annotations

from pathlib import Path

from snapgroup.domain.inventory import Group
from snapgroup.domain.models import VmState
from snapgroup.store.repo import Repo
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab
from tests.unit.test_lifecycle import assert_whole

VM = "a" * 32


def _groups(lab: Lab, tmp_path: Path) -> list[Group]:
    lab_domain(lab.hv, state=VmState.STOPPED, directory=str(tmp_path))  # verify lists it
    return lab.take_groups(2)


def _remove(lab: Lab, vm_uuid: str, *, disks: bool = True) -> None:
    """virsh undefine, and (`disks`) rm of its disk files."""
    if disks:
        for d in lab.hv.domains[vm_uuid].disks:
            assert d.path is not None
            lab.images.remove(d.path)
    del lab.hv.domains[vm_uuid]


def _recorded(lab: Lab, vm_uuid: str) -> int:
    with lab.engine.db.transaction() as session:
        return len(Repo(session).volumes_of_vm(vm_uuid))


def test_a_removed_clone_is_forgotten_by_sync_and_verify_is_clean(lab: Lab, tmp_path: Path) -> None:
    groups = _groups(lab, tmp_path)
    clone = lab.engine.clone(groups[0].uuid, name="copy")
    own = lab.engine.create(vm="copy", name="c0")  # the clone's own group, deleted again
    assert lab.engine.delete(own.uuid).error is None
    _remove(lab, clone.uuid)

    changes = lab.engine.sync()

    kinds = [c.kind for c in changes if c.vm_uuid == clone.uuid]
    assert kinds == ["vm-gone", *["volume-detached"] * 3, *["volume-removed"] * 3, "vm-forgotten"]
    assert changes[-1].kind == "vm-forgotten" and changes[-1].vm_uuid == clone.uuid
    assert _recorded(lab, clone.uuid) == 0
    assert lab.engine.verify() == []
    assert lab.engine.sync() == []  # nothing left to forget
    assert lab.engine.delete(groups[0].uuid).error is None  # no longer pinned
    assert_whole(lab)


def test_verify_repair_forgets_a_removed_vm_without_a_sync(lab: Lab, tmp_path: Path) -> None:
    groups = _groups(lab, tmp_path)
    clone = lab.engine.clone(groups[1].uuid, name="copy")
    _remove(lab, clone.uuid)

    (missing,) = lab.engine.verify()
    assert (missing.kind, missing.vm_uuid, missing.repaired) == ("vm-missing", clone.uuid, False)
    assert "sync" in missing.detail

    (repaired,) = lab.engine.verify(repair=True)
    assert (repaired.kind, repaired.repaired) == ("vm-missing", True)
    assert "forgotten" in repaired.detail
    assert _recorded(lab, clone.uuid) == 0
    assert lab.engine.verify() == []


def test_a_gone_vm_with_groups_is_still_reported_and_kept(lab: Lab, tmp_path: Path) -> None:
    groups = _groups(lab, tmp_path)
    _remove(lab, VM, disks=False)

    assert "vm-forgotten" not in [c.kind for c in lab.engine.sync()]
    for repair in (False, True):
        (missing,) = lab.engine.verify(repair=repair)
        assert (missing.kind, missing.repaired) == ("vm-missing", False)
        assert "2 group(s)" in missing.detail
    assert [g.uuid for g in lab.engine.list_groups()] == [g.uuid for g in groups]
    assert _recorded(lab, VM) == 3


def test_an_undefined_clone_whose_disks_remain_is_kept_until_they_go(
    lab: Lab, tmp_path: Path
) -> None:
    groups = _groups(lab, tmp_path)
    clone = lab.engine.clone(groups[0].uuid, name="copy")
    _remove(lab, clone.uuid, disks=False)

    assert "vm-forgotten" not in [c.kind for c in lab.engine.sync()]
    (missing,) = lab.engine.verify(repair=True)
    assert (missing.kind, missing.repaired) == ("vm-missing", False)
    assert "another VM's snapshots" in missing.detail
    assert _recorded(lab, clone.uuid) == 3


def test_a_gone_vm_a_clone_reads_is_kept_quietly_until_the_clone_goes(
    lab: Lab, tmp_path: Path
) -> None:
    groups = _groups(lab, tmp_path)
    clone = lab.engine.clone(groups[0].uuid, name="copy")
    for g in groups:  # the groups go (ungrouped: the clone's snapshots are kept)
        lab.engine.ungroup(g.uuid)
    _remove(lab, VM, disks=False)

    assert "vm-forgotten" not in [c.kind for c in lab.engine.sync()]
    assert lab.engine.verify() == []  # the original's files are verified as the clone's
    assert _recorded(lab, VM) == 3

    _remove(lab, clone.uuid)
    forgotten = [c.vm_uuid for c in lab.engine.sync() if c.kind == "vm-forgotten"]
    assert sorted(forgotten) == sorted([clone.uuid, VM])  # the clone, then its origin
    assert lab.engine.verify() == []
