"""Every file of every branch, on the fakes: what verify reports (missing files, a real
backing file other than the recorded parent, dangling parent links, each with the groups
it breaks) and what availability makes of missing and changed snapshots (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapgroup.domain.errors import OperationError
from snapgroup.domain.inventory import Group
from snapgroup.domain.models import VmState
from snapgroup.store.repo import Repo
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab

VM = "a" * 32


def side_branch(lab: Lab, tmp_path: Path) -> tuple[Group, Group, Group]:
    """g1, g2, then a revert to g1 (safety group S): g2 and S are on a side branch."""
    lab_domain(lab.hv, state=VmState.STOPPED, directory=str(tmp_path))
    g1 = lab.engine.create(vm="vm1", name="g1")
    g2 = lab.engine.create(vm="vm1", name="g2")
    report = lab.engine.revert(g1.uuid)
    assert report.error is None and report.safety_group is not None
    return g1, g2, report.safety_group


def ref_of(group: Group, device_id: int) -> tuple[str, str, str]:
    """(snapshot uuid, volume uuid, file) of the group's ref on that disk."""
    (ref,) = [r for r in group.refs if r.device_id == device_id]
    return ref.volume_snapshot_uuid, ref.volume_uuid, ref.install_path


def test_an_intact_tree_verifies_clean(lab: Lab, tmp_path: Path) -> None:
    side_branch(lab, tmp_path)
    assert lab.engine.verify(vm="vm1") == []


def test_verify_reports_a_missing_side_branch_file_with_the_groups_reading_it(
    lab: Lab, tmp_path: Path
) -> None:
    _g1, g2, safety = side_branch(lab, tmp_path)
    _snap, volume, path = ref_of(g2, 1)
    del lab.images.images[path]

    (diff,) = lab.engine.verify(vm="vm1")

    assert diff.kind == "file-missing" and diff.volume_uuid == volume
    assert diff.detail == f"vdb: {path} is missing (snapshot {ref_of(g2, 1)[0]})"
    assert set(diff.groups) == {g2.uuid, safety.uuid}
    assert diff.to_dict()["groups"] == list(diff.groups)


def test_verify_reports_a_missing_file_under_the_current_top(lab: Lab, tmp_path: Path) -> None:
    g1, g2, safety = side_branch(lab, tmp_path)
    _snap, _volume, path = ref_of(g1, 2)  # under vdc's current top and every group
    del lab.images.images[path]

    (diff,) = lab.engine.verify(vm="vm1")

    assert diff.kind == "file-missing" and path in diff.detail
    assert set(diff.groups) == {g1.uuid, g2.uuid, safety.uuid}


def test_verify_reports_a_file_on_another_backing_file_than_recorded(
    lab: Lab, tmp_path: Path
) -> None:
    g1, g2, safety = side_branch(lab, tmp_path)
    g1_file = ref_of(g1, 0)[2]
    safety_file = ref_of(safety, 0)[2]
    assert lab.images.images[safety_file].backing == ref_of(g2, 0)[2]
    lab.images.images[safety_file].backing = g1_file  # skips g2's file

    (diff,) = lab.engine.verify(vm="vm1")

    assert diff.kind == "chain-mismatch"
    assert diff.detail == (
        f"vda: {safety_file} (snapshot {ref_of(safety, 0)[0]}) is backed by {g1_file}, "
        f"the metadata says {ref_of(g2, 0)[2]}"
    )
    assert diff.groups == (safety.uuid,)


def test_verify_reports_an_unreadable_chain_once_per_file_read(lab: Lab, tmp_path: Path) -> None:
    _g1, _g2, safety = side_branch(lab, tmp_path)
    safety_file = ref_of(safety, 1)[2]
    lab.images.images[safety_file].backing = str(tmp_path / "nowhere.qcow2")

    diffs = lab.engine.verify(vm="vm1")

    assert [d.kind for d in diffs] == ["chain-unreadable"]
    assert safety_file in diffs[0].detail and diffs[0].groups == (safety.uuid,)


def test_verify_reports_a_parent_link_the_metadata_does_not_hold(lab: Lab, tmp_path: Path) -> None:
    _g1, g2, _safety = side_branch(lab, tmp_path)
    snap_uuid = ref_of(g2, 2)[0]
    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        row = repo.snapshot(snap_uuid)
        assert row is not None
        row.parent_uuid = "e" * 32
        repo.add(row)

    diffs = lab.engine.verify(vm="vm1")

    assert [d.kind for d in diffs] == ["metadata-broken"]
    assert f"snapshot {snap_uuid}" in diffs[0].detail and "e" * 32 in diffs[0].detail


def test_check_a_missing_file_below_the_snapshot_makes_every_group_above_unavailable(
    lab: Lab, tmp_path: Path
) -> None:
    g1, g2, safety = side_branch(lab, tmp_path)
    _snap, volume, path = ref_of(g2, 1)
    del lab.images.images[path]

    states = {s.uuid: s for s in lab.engine.check([g1.uuid, g2.uuid, safety.uuid])}

    assert states[g1.uuid].available
    assert not states[g2.uuid].available
    assert states[g2.uuid].reason == (
        f"volume {_name(lab, volume)} ({volume}): file {path} of its snapshot "
        f"{ref_of(g2, 1)[0]} is missing"
    )
    safety_reason = states[safety.uuid].reason or ""
    assert not states[safety.uuid].available
    assert f"file {path} of the snapshot below it {ref_of(g2, 1)[0]} is missing" in safety_reason
    assert states[safety.uuid].volumes[volume] is not None
    assert [v for v, p in states[safety.uuid].volumes.items() if p is None] == [
        ref_of(safety, 0)[1],
        ref_of(safety, 2)[1],
    ]


def _mark_changed(lab: Lab, snapshot_uuid: str, why: str) -> None:
    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        row = repo.snapshot(snapshot_uuid)
        assert row is not None
        row.changed = why
        repo.add(row)


def test_a_changed_snapshot_makes_its_group_unavailable_and_not_those_above_it(
    lab: Lab, tmp_path: Path
) -> None:
    g1, g2, safety = side_branch(lab, tmp_path)
    snap, volume, _path = ref_of(g2, 2)
    _mark_changed(lab, snap, "a merge into its file failed midway")

    states = {s.uuid: s for s in lab.engine.check([g1.uuid, g2.uuid, safety.uuid])}

    assert states[g1.uuid].available
    assert not states[g2.uuid].available
    assert states[g2.uuid].volumes[volume] == (
        f"volume {_name(lab, volume)} ({volume}): its snapshot {snap} changed: "
        "a merge into its file failed midway"
    )
    # The safety group reads through the child that was being merged down, which still
    # holds every cluster the failed merge copied: its point in time is intact.
    assert states[safety.uuid].available, states[safety.uuid].reason


def test_revert_refuses_a_changed_volume_and_restores_the_others(lab: Lab, tmp_path: Path) -> None:
    _g1, g2, _safety = side_branch(lab, tmp_path)
    snap, volume, _path = ref_of(g2, 2)
    _mark_changed(lab, snap, "a merge into its file failed midway")
    before = {d.target: d.path for d in lab.hv.domains[VM].disks}

    with pytest.raises(OperationError, match=r"unavailable.*changed"):
        lab.engine.revert(g2.uuid)
    with pytest.raises(OperationError, match=f"its snapshot {snap} changed"):
        lab.engine.revert(g2.uuid, volumes=[volume])
    assert {d.target: d.path for d in lab.hv.domains[VM].disks} == before

    keep = [ref_of(g2, 0)[1], ref_of(g2, 1)[1]]
    report = lab.engine.revert(g2.uuid, volumes=keep, safety_group=False)

    assert report.error is None and [r.volume_uuid for r in report.results] == keep
    disks = {d.target: d.path for d in lab.hv.domains[VM].disks}
    for device, target in ((0, "vda"), (1, "vdb")):
        top = disks[target]
        assert top is not None and lab.images.images[top].backing == ref_of(g2, device)[2]
    assert disks["vdc"] == before["vdc"]


def test_check_looks_at_each_file_once(lab: Lab, tmp_path: Path) -> None:
    g1, g2, safety = side_branch(lab, tmp_path)
    looked: list[str] = []
    exists = lab.images.exists

    def counting(path: str) -> bool:
        looked.append(path)
        return exists(path)

    lab.images.exists = counting  # type: ignore[method-assign]
    assert all(s.available for s in lab.engine.check([g1.uuid, g2.uuid, safety.uuid]))
    assert sorted(looked) == sorted(set(looked))
    # g1's, g2's and the safety group's files on three disks: nine files in all
    assert len(looked) == 9


def _name(lab: Lab, volume_uuid: str) -> str:
    with lab.engine.db.transaction() as session:
        row = Repo(session).volume(volume_uuid)
        assert row is not None
        return row.name
