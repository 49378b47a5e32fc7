"""A group's whole life with the fakes: check, ungroup, single snapshots, tree, revert,
merges in trees, sync."""

from __future__ import annotations

from dataclasses import replace

import pytest

from snapgroup.domain.errors import InvalidArgument, NotFound, OperationError
from snapgroup.domain.inventory import Group
from snapgroup.domain.models import DomainDisk, VmState
from snapgroup.domain.planner import expected_chain
from snapgroup.store.repo import Repo
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab

VM = "a" * 32


def history(lab: Lab, state: VmState = VmState.STOPPED, n: int = 3) -> list[Group]:
    """n groups; cluster 0 of each disk says which point in time it holds, cluster
    10+k was written only before group k."""
    lab_domain(lab.hv, state=state)
    groups = []
    for k in range(n):
        write_all(lab, f"@{k}", 0)
        write_all(lab, f"only{k}", 10 + k)
        groups.append(lab.engine.create(vm="vm1", name=f"g{k}"))
    write_all(lab, "@now", 0)
    return groups


def write_all(lab: Lab, value: str, cluster: int) -> None:
    for disk in lab.hv.domains[VM].disks:
        assert disk.path is not None
        lab.images.write(disk.path, cluster, f"{disk.target}{value}")


def views(lab: Lab, group: Group) -> list[dict[int, str]]:
    fresh = lab.engine.get(group.uuid)
    return [lab.images.read(r.install_path) for r in fresh.refs if not r.snapshot_deleted]


def assert_whole(lab: Lab) -> None:
    """Metadata matches the domain and every chain, every file is used, nothing runs."""
    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        files: set[str] = set()
        volumes = [v for vm in lab.hv.domains for v in repo.volumes_of_vm(vm, attached_only=True)]
        for volume in volumes:  # the VM's, and its clones'
            assert lab.hv.disk_path(volume.vm_uuid, volume.target) == volume.install_path
            lineage = repo.lineage(volume)
            chain = [layer.path for layer in lab.images.chain(volume.install_path)]
            assert chain == expected_chain(volume, lineage)
            files.update(chain)
            for snapshot in lineage:  # every branch, not only the current one
                below = lab.images.images[snapshot.install_path].backing
                parent = next((s for s in lineage if s.uuid == snapshot.parent_uuid), None)
                assert below == (parent.install_path if parent else None), snapshot.uuid
                files.add(snapshot.install_path)
    assert set(lab.images.images) == files
    assert [op for op in lab.engine.operations() if op.state == "running"] == []


# -- check, ungroup, snapshots ------------------------------------------------------


def test_check_reports_available_groups(lab: Lab) -> None:
    groups = history(lab)
    results = lab.engine.check([g.uuid for g in groups])
    assert [r.to_dict() for r in results] == [
        {"uuid": g.uuid, "available": True, "reason": None} for g in groups
    ]


def test_check_unknown_group_is_not_found(lab: Lab) -> None:
    history(lab, n=1)
    with pytest.raises(NotFound):
        lab.engine.check(["f" * 32])


def test_single_snapshot_delete_marks_the_ref_and_keeps_every_view(lab: Lab) -> None:
    groups = history(lab, VmState.RUNNING)
    current = lab.view_of_vm()
    before = {g.uuid: views(lab, g) for g in groups}
    victim = groups[1].refs[1]  # g1's snapshot of vdb: an intermediate one

    result = lab.engine.delete_snapshot(victim.volume_snapshot_uuid)

    assert result.success and result.error is None
    g1 = lab.engine.get(groups[1].uuid)
    assert [r.snapshot_deleted for r in g1.refs] == [False, True, False]
    assert lab.view_of_vm() == current
    for g in (groups[0], groups[2]):
        assert views(lab, g) == before[g.uuid]
    (r,) = lab.engine.check([g1.uuid])
    assert not r.available
    assert (
        r.reason
        == f"snapshot {victim.volume_snapshot_uuid} of volume {victim.volume_name} was deleted"
    )
    assert_whole(lab)
    # deleting it again is a no-op; deleting the group then drops it whole
    assert lab.engine.delete_snapshot(victim.volume_snapshot_uuid).success
    assert lab.engine.delete(g1.uuid).error is None
    assert lab.view_of_vm() == current
    assert_whole(lab)


def test_single_snapshot_delete_unknown_is_not_found(lab: Lab) -> None:
    history(lab, n=1)
    with pytest.raises(NotFound):
        lab.engine.delete_snapshot("e" * 32)


def test_ungroup_keeps_the_snapshots(lab: Lab) -> None:
    groups = history(lab, n=2)
    data = views(lab, groups[0])
    dropped = lab.engine.ungroup(groups[0].uuid)
    assert dropped.uuid == groups[0].uuid
    assert [g.uuid for g in lab.engine.list_groups()] == [groups[1].uuid]
    listed = lab.engine.list_snapshots("vm1")
    assert len(listed) == 6
    mine = [s for s in listed if s.uuid in {r.volume_snapshot_uuid for r in dropped.refs}]
    assert [s.group_uuid for s in mine] == [None, None, None]
    assert [lab.images.read(s.install_path) for s in mine] == data
    # the snapshots stay deletable on their own
    for s in mine:
        assert lab.engine.delete_snapshot(s.uuid).success
    assert len(lab.engine.list_snapshots("vm1")) == 3
    assert_whole(lab)
    with pytest.raises(NotFound):
        lab.engine.ungroup(groups[0].uuid)


def test_snapshots_inventory(lab: Lab) -> None:
    groups = history(lab, n=2)
    inventories = [s.to_inventory() for s in lab.engine.list_snapshots("vm1")]
    first = inventories[0]
    assert first["uuid"] == groups[0].refs[0].volume_snapshot_uuid
    assert first["groupUuid"] == groups[0].uuid
    assert first["parentUuid"] is None and first["latest"] is False
    assert inventories[1]["parentUuid"] == first["uuid"] and inventories[1]["latest"] is True
    assert {"uuid", "volumeUuid", "primaryStorageInstallPath", "status"} <= set(first)


# -- revert ---------------------------------------------------------------------------


def test_revert_to_the_first_group_then_to_the_later_ones(lab: Lab) -> None:
    groups = history(lab)
    now = lab.view_of_vm()
    saved = {g.uuid: views(lab, g) for g in groups}

    report = lab.engine.revert(groups[0].uuid)

    assert report.error is None
    assert [r.success for r in report.results] == [True] * 3
    assert lab.view_of_vm() == saved[groups[0].uuid]
    assert report.safety_group is not None
    assert views(lab, report.safety_group) == now  # nothing lost
    for g in groups:
        assert views(lab, g) == saved[g.uuid]
    assert_whole(lab)
    # the later groups still revert correctly, and so does the safety group
    for target in (groups[2], groups[1], report.safety_group):
        assert lab.engine.revert(target.uuid, safety_group=False).error is None
        expected = saved.get(target.uuid, now)
        assert lab.view_of_vm() == expected
        assert_whole(lab)


def test_revert_refuses_a_running_vm_unless_told_to_stop_it(lab: Lab) -> None:
    groups = history(lab, VmState.RUNNING)
    with pytest.raises(OperationError, match="needs it stopped"):
        lab.engine.revert(groups[0].uuid)
    assert lab.hv.called("set_disk_sources") == []
    report = lab.engine.revert(groups[0].uuid, stop=True, stop_timeout=0)
    assert report.error is None
    assert lab.hv.called("shutdown") == [(VM, 0)]
    assert lab.hv.domains[VM].state is VmState.STOPPED


def test_revert_without_safety_group_discards_the_current_data(lab: Lab) -> None:
    groups = history(lab)
    tops = [d.path for d in lab.hv.domains[VM].disks]
    report = lab.engine.revert(groups[1].uuid, safety_group=False)
    assert report.safety_group is None and report.error is None
    assert all(t not in lab.images.images for t in tops)
    assert len(lab.engine.list_groups()) == 3
    assert_whole(lab)


def test_partial_revert_leaves_the_other_volumes(lab: Lab) -> None:
    groups = history(lab)
    now = lab.view_of_vm()
    vdb = groups[0].refs[1]
    report = lab.engine.revert(groups[0].uuid, volumes=[vdb.volume_uuid])
    assert [r.volume_uuid for r in report.results] == [vdb.volume_uuid]
    after = lab.view_of_vm()
    assert after[0] == now[0] and after[2] == now[2]
    assert after[1] == lab.images.read(vdb.install_path)
    with pytest.raises(InvalidArgument):
        lab.engine.revert(groups[0].uuid, volumes=["9" * 32])
    assert_whole(lab)


def test_unavailable_group_needs_volumes_to_revert(lab: Lab) -> None:
    groups = history(lab)
    deleted = groups[0].refs[2]
    lab.engine.delete_snapshot(deleted.volume_snapshot_uuid)
    with pytest.raises(OperationError, match=r"unavailable.*--volumes"):
        lab.engine.revert(groups[0].uuid)
    with pytest.raises(OperationError, match="was deleted"):
        lab.engine.revert(groups[0].uuid, volumes=[deleted.volume_uuid])
    keep = [r.volume_uuid for r in groups[0].refs[:2]]
    assert lab.engine.revert(groups[0].uuid, volumes=keep).error is None
    assert_whole(lab)


def test_failed_switch_rolls_back_and_keeps_the_safety_group(lab: Lab) -> None:
    from snapgroup.domain.errors import HypervisorError

    groups = history(lab)
    now = lab.view_of_vm()
    lab.hv.fail["set_disk_sources"] = HypervisorError("defineXML refused")
    lab.hv.fail_after["set_disk_sources"] = 1  # the safety group's switch goes through
    report = lab.engine.revert(groups[0].uuid)
    assert report.error is not None and not any(r.success for r in report.results)
    assert report.error.to_dict()["cause"]["details"] == "defineXML refused"
    del lab.hv.fail["set_disk_sources"]
    assert lab.view_of_vm() == now
    assert len(lab.engine.list_groups()) == 4  # the safety group stays: harmless
    assert_whole(lab)


# -- merges in a tree -------------------------------------------------------------------


def _tree(lab: Lab, state: VmState) -> tuple[list[Group], Group]:
    """g0 -> g1 -> g2 -> safety, and the VM back on g0 (then started when `state`
    is RUNNING): g0's snapshots have two children each."""
    groups = history(lab)
    report = lab.engine.revert(groups[0].uuid)
    assert report.safety_group is not None
    write_all(lab, "@branch", 0)
    lab.hv.domains[VM].state = state
    return groups, report.safety_group


@pytest.mark.parametrize("state", [VmState.RUNNING, VmState.STOPPED])
@pytest.mark.parametrize("victim", [0, 1, 2, 3], ids=["g0", "g1", "g2", "safety"])
def test_delete_any_group_of_a_tree(lab: Lab, state: VmState, victim: int) -> None:
    groups, safety = _tree(lab, state)
    everything = [*groups, safety]
    saved = {g.uuid: views(lab, g) for g in everything}
    now = lab.view_of_vm()

    report = lab.engine.delete(everything[victim].uuid)

    assert report.error is None, report.to_response()
    assert lab.view_of_vm() == now
    for g in everything:
        if g is not everything[victim]:
            assert views(lab, g) == saved[g.uuid], g.name
    assert_whole(lab)


@pytest.mark.parametrize("state", [VmState.RUNNING, VmState.STOPPED])
def test_delete_every_group_of_a_tree_in_turn(lab: Lab, state: VmState) -> None:
    groups, safety = _tree(lab, state)
    now = lab.view_of_vm()
    for g in (groups[0], safety, groups[2], groups[1]):
        assert lab.engine.delete(g.uuid).error is None
        assert lab.view_of_vm() == now
        assert_whole(lab)
    assert len(lab.images.images) == 3  # one file per disk is left


def test_live_merge_through_the_active_branch_uses_libvirt(lab: Lab) -> None:
    groups, _ = _tree(lab, VmState.RUNNING)
    lab.engine.delete(groups[0].uuid)
    # g0 had two children: the inactive one was rebased with qemu-img, the active one
    # was committed by libvirt
    assert len(lab.hv.called("block_commit")) == 3
    assert len(lab.images.called("rebase")) == 3


def test_tree_output(lab: Lab) -> None:
    groups, safety = _tree(lab, VmState.STOPPED)
    tree = lab.engine.group_tree("vm1")
    date = {g.uuid: _date(lab, g.uuid) for g in [*groups, safety]}
    g0, g1, g2 = groups
    assert tree.render() == (
        f"VM vm1 ({VM})\n"
        f"g0  {g0.uuid}  {date[g0.uuid]}  <- current\n"
        f"└── g1  {g1.uuid}  {date[g1.uuid]}\n"
        f"    └── g2  {g2.uuid}  {date[g2.uuid]}\n"
        f"        └── before revert to g0  {safety.uuid}  {date[safety.uuid]}\n"
    )
    assert tree.to_dict()["tree"][0]["current"] is True


def test_tree_branches_after_a_revert_and_a_new_group(lab: Lab) -> None:
    _tree(lab, VmState.STOPPED)
    g3 = lab.engine.create(vm="vm1", name="g3")
    tree = lab.engine.group_tree("vm1")
    (root,) = tree.roots
    assert [c.name for c in root.children] == ["g1", "g3"]
    assert root.children[1].current and not root.current
    assert "├── g1" in tree.render() and "└── g3" in tree.render()
    assert g3.uuid in tree.render()


def _date(lab: Lab, uuid: str) -> str:
    from snapgroup.domain.inventory import zstack_date

    return zstack_date(lab.engine.get(uuid).create_date)


# -- sync -----------------------------------------------------------------------------


def _detach(lab: Lab, target: str) -> DomainDisk:
    disk = next(d for d in lab.hv.domains[VM].disks if d.target == target)
    lab.hv.domains[VM].disks.remove(disk)
    return disk


def test_detach_and_attach_between_groups_changes_availability(lab: Lab) -> None:
    groups = history(lab, n=1)
    vdc = _detach(lab, "vdc")
    changes = lab.engine.sync("vm1")
    assert [c.kind for c in changes] == ["volume-detached"]
    (r,) = lab.engine.check([groups[0].uuid])
    assert not r.available and "is no longer attached" in (r.reason or "")
    g1 = lab.engine.create(vm="vm1", name="g1")
    assert g1.snapshot_count == 2
    lab.hv.domains[VM].disks.append(vdc)  # back: the first group is whole again
    results = lab.engine.check([groups[0].uuid, g1.uuid])
    assert results[0].available
    assert not results[1].available
    assert "is attached now but not in the group" in (results[1].reason or "")


def test_new_disk_makes_older_groups_unavailable(lab: Lab) -> None:
    groups = history(lab, n=1)
    lab.images.add("/lab/new.qcow2")
    lab.hv.domains[VM].disks.append(DomainDisk("vdd", "disk", "file", "/lab/new.qcow2", "qcow2"))
    assert [c.kind for c in lab.engine.sync("vm1")] == ["volume-attached"]
    (r,) = lab.engine.check([groups[0].uuid])
    assert r.reason == "volume DATA-vm1-vdd (vdd) is attached now but not in the group"


def test_removed_data_volume_marks_its_refs_deleted_and_keeps_files(lab: Lab) -> None:
    groups = history(lab, n=2)
    vdc = _detach(lab, "vdc")
    assert vdc.path is not None
    files = set(lab.images.images)
    lab.images.remove(vdc.path)  # the volume itself was deleted
    kinds = [c.kind for c in lab.engine.sync("vm1")]
    assert kinds == ["volume-detached", "volume-removed"]
    for g in groups:
        assert [r.snapshot_deleted for r in lab.engine.get(g.uuid).refs] == [False, False, True]
    assert set(lab.images.images) == files - {vdc.path}  # sync removed nothing
    assert lab.engine.sync("vm1") == []  # recorded once
    # the group can still be deleted: the removed volume's snapshot is a no-op
    assert lab.engine.delete(groups[0].uuid, mode="Enforcing").error is None


def test_undefined_vm_marks_groups_unavailable_and_keeps_everything(lab: Lab) -> None:
    groups = history(lab, n=2)
    files = set(lab.images.images)
    del lab.hv.domains[VM]
    changes = lab.engine.sync("vm1")  # by name: found in the metadata
    assert changes[0].kind == "vm-gone"
    assert [c.kind for c in changes[1:]] == ["volume-detached"] * 3
    results = lab.engine.check([g.uuid for g in groups])
    assert all(
        not r.available and f"VM {VM} is no longer defined" in (r.reason or "") for r in results
    )
    assert set(lab.images.images) == files
    assert len(lab.engine.list_groups()) == 2
    assert len(lab.engine.list_snapshots(VM)) == 6
    with pytest.raises(OperationError, match="no longer defined"):
        lab.engine.revert(groups[0].uuid)


def test_top_changed_outside_snapgroup_is_reported(lab: Lab) -> None:
    groups = history(lab, n=1)
    disk = lab.hv.domains[VM].disks[1]
    assert disk.path is not None
    lab.images.create_overlay("/lab/outside.qcow2", backing=disk.path, backing_format="qcow2")
    lab.hv.domains[VM].disks[1] = replace(disk, path="/lab/outside.qcow2")
    changes = lab.engine.sync("vm1")
    kinds = [c.kind for c in changes]
    assert kinds == ["top-changed", "volume-attached"]
    assert "an overlay made outside snapgroup" in changes[0].detail
    (r,) = lab.engine.check([groups[0].uuid])
    assert not r.available
