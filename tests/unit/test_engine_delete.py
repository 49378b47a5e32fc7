from __future__ import annotations

import re
import threading
from typing import Any

import pytest

from snapgroup.domain.errors import HypervisorError, ImageToolError, OperationError
from snapgroup.domain.inventory import Group
from snapgroup.domain.models import VmState
from snapgroup.ops.delete import DeleteRefused
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab

VM = "a" * 32


def _three_groups(lab: Lab, state: VmState) -> list[Group]:
    """Three groups; each disk's cluster 0 says which point in time it holds."""
    lab_domain(lab.hv, state=state)
    groups = lab.take_groups(3)
    for disk in lab.hv.domains[VM].disks:
        assert disk.path is not None
        lab.images.write(disk.path, 0, f"{disk.target}@now")
    return groups


def _views(lab: Lab, group: Group) -> list[dict[int, str]]:
    return [lab.images.read(ref.install_path) for ref in group.refs]


@pytest.mark.parametrize("state", [VmState.RUNNING, VmState.STOPPED])
@pytest.mark.parametrize("victim", [0, 1, 2])
def test_delete_any_group_keeps_current_data_and_other_restore_points(
    lab: Lab, state: VmState, victim: int
) -> None:
    groups = _three_groups(lab, state)
    current = lab.view_of_vm()
    survivors = [g for i, g in enumerate(groups) if i != victim]
    views_before = {g.uuid: _views(lab, g) for g in survivors}

    report = lab.engine.delete(groups[victim].uuid)

    assert report.error is None
    assert [r.success for r in report.results] == [True, True, True]
    assert lab.view_of_vm() == current
    for g in survivors:
        fresh = lab.engine.get(g.uuid)
        assert _views(lab, fresh) == views_before[g.uuid]
        for ref in fresh.refs:  # every other ref's installPath is true
            assert ref.install_path in lab.images.images
    assert [g.uuid for g in lab.engine.list_groups()] == [g.uuid for g in survivors]
    live_files = {
        p
        for d in lab.hv.domains[VM].disks
        if d.path
        for p in (layer.path for layer in lab.images.chain(d.path))
    }
    assert set(lab.images.images) == live_files  # the merged file is gone, nothing orphaned
    merge_calls = lab.hv.called("block_commit") if state.is_live else lab.images.called("commit")
    assert len(merge_calls) == 3


def test_delete_all_groups_returns_to_the_original_files(lab: Lab) -> None:
    groups = _three_groups(lab, VmState.RUNNING)
    current = lab.view_of_vm()
    for g in (groups[1], groups[0], groups[2]):
        assert lab.engine.delete(g.uuid).error is None
    assert [d.path for d in lab.hv.domains[VM].disks] == [f"/lab/disk{i}.qcow2" for i in range(3)]
    assert lab.view_of_vm() == current
    assert len(lab.images.images) == 3


def test_unknown_group_delete_succeeds_empty(lab: Lab) -> None:
    report = lab.engine.delete("e" * 32)
    assert report.results == () and report.to_response() == {"results": []}


def test_permissive_refuses_on_a_missing_file_and_changes_nothing(lab: Lab) -> None:
    groups = _three_groups(lab, VmState.RUNNING)
    victim = groups[1].refs[2].install_path
    lab.images.images.pop(victim)
    files, paths = set(lab.images.images), [d.path for d in lab.hv.domains[VM].disks]
    with pytest.raises(OperationError) as err:
        lab.engine.delete(groups[1].uuid)
    assert err.value.code == "SYS.1006"
    assert set(lab.images.images) == files
    assert [d.path for d in lab.hv.domains[VM].disks] == paths
    assert lab.engine.get(groups[1].uuid).snapshot_count == 3
    assert lab.hv.called("block_commit") == []


def test_short_space_permissive_refuses_enforcing_starts_no_merge_that_cannot_fit(
    lab: Lab,
) -> None:
    groups = _three_groups(lab, VmState.STOPPED)
    current, files = lab.view_of_vm(), dict(lab.images.images)
    lab.images.free = 0
    with pytest.raises(DeleteRefused, match="free") as err:
        lab.engine.delete(groups[0].uuid)
    assert err.value.code == "SYS.1006"
    refused = err.value.report.results
    assert [r.success for r in refused] == [False, False, False]
    assert all(r.error is not None and "0 free" in r.error.details for r in refused)
    # Enforcing skips refusable checks, but a merge running dry halfway would leave the
    # snapshot's file holding part of a later layer: such a merge is never started.
    report = lab.engine.delete(groups[0].uuid, mode="Enforcing")
    assert [r.success for r in report.results] == [False, False, False]
    assert all(r.error is not None and "would not fit" in r.error.details for r in report.results)
    assert lab.images.called("commit") == []
    assert lab.view_of_vm() == current and set(lab.images.images) == set(files)
    assert [g.uuid for g in lab.engine.list_groups()] == [g.uuid for g in groups[1:]]


@pytest.mark.parametrize("state", [VmState.RUNNING, VmState.STOPPED])
def test_space_is_counted_for_all_merges_of_a_delete_together(lab: Lab, state: VmState) -> None:
    """Room for 1.5 merges: each alone would fit, the three together do not."""
    groups = _three_groups(lab, state)
    lab.images.free = 0
    with pytest.raises(DeleteRefused) as err:
        lab.engine.delete(groups[0].uuid)
    figures = re.search(r"need (\d+) bytes together", err.value.details)
    assert figures is not None
    one = int(figures.group(1)) // 3
    assert one > 64 * 1024  # data, L2 table, refcount block and slack, not just the data
    lab.images.free = one + one // 2
    current = lab.view_of_vm()
    with pytest.raises(DeleteRefused, match=f"{one * 3} bytes together.*{one + one // 2} free"):
        lab.engine.delete(groups[0].uuid)
    assert lab.hv.called("block_commit") == [] and lab.images.called("commit") == []
    assert lab.engine.get(groups[0].uuid).snapshot_count == 3
    report = lab.engine.delete(groups[0].uuid, mode="Enforcing")
    assert [r.success for r in report.results] == [True, False, False]  # the one that fits
    assert lab.view_of_vm() == current


def test_enforcing_attempts_every_snapshot_and_drops_the_group(lab: Lab) -> None:
    groups = _three_groups(lab, VmState.RUNNING)
    current = lab.view_of_vm()
    # The disks merge side by side, so which call comes first is not fixed: fail by disk.
    original = lab.hv.block_commit

    def block_commit(vm_uuid: str, target: str, **kwargs: Any) -> None:
        if target != "vda":
            raise HypervisorError("block job failed")
        original(vm_uuid, target, **kwargs)

    lab.hv.block_commit = block_commit  # type: ignore[method-assign]
    lab.hv.fail["block_commit"] = HypervisorError("block job failed")
    lab.hv.fail_after["block_commit"] = 1  # vda merges, the others fail
    report = lab.engine.delete(groups[1].uuid, mode="Enforcing")
    assert [r.success for r in report.results] == [True, False, False]
    response = report.to_response()
    assert response["error"]["code"] == "VOLUME_SNAPSHOT.1002"
    assert response["results"][1]["error"]["code"] == "SYS.1004"
    assert response["results"][1]["error"]["cause"]["code"] == "HOST.1002"
    assert lab.view_of_vm() == current
    assert [g.uuid for g in lab.engine.list_groups()] == [groups[0].uuid, groups[2].uuid]
    # the unmerged files stay in the chain, and the chain still matches the metadata
    del lab.hv.fail["block_commit"]
    lab.hv.block_commit = original  # type: ignore[method-assign]
    assert lab.engine.delete(groups[2].uuid).error is None
    assert lab.view_of_vm() == current


def test_live_disks_merge_side_by_side_and_one_failing_disk_is_its_own_result(
    lab: Lab,
) -> None:
    groups = _three_groups(lab, VmState.RUNNING)
    current = lab.view_of_vm()
    survivor_views = [_views(lab, g) for g in (groups[0], groups[2])]
    original = lab.hv.block_commit
    # Every disk's job must be under way before any ends: a sequential delete would
    # wait here for good (BrokenBarrierError after the timeout).
    together = threading.Barrier(3, timeout=10)
    journal_threads: set[threading.Thread] = set()
    step = lab.engine.journal.step

    def block_commit(vm_uuid: str, target: str, **kwargs: Any) -> None:
        together.wait()
        if target == "vdb":
            raise HypervisorError("block job failed")
        original(vm_uuid, target, **kwargs)

    def recording_step(*args: Any, **kwargs: Any) -> None:
        journal_threads.add(threading.current_thread())
        step(*args, **kwargs)

    lab.hv.block_commit = block_commit  # type: ignore[method-assign]
    lab.engine.journal.step = recording_step  # type: ignore[method-assign]
    progress: list[tuple[int, int]] = []
    report = lab.engine.delete(groups[1].uuid, progress=lambda p: progress.append((p.cur, p.end)))

    assert [r.success for r in report.results] == [True, False, True]
    assert report.results[1].error is not None
    assert journal_threads == {threading.main_thread()}  # the store from one thread only
    assert progress and progress[-1][0] <= progress[-1][1]
    assert lab.view_of_vm() == current
    fresh = [lab.engine.get(g.uuid) for g in (groups[0], groups[2])]
    assert [_views(lab, g) for g in fresh] == survivor_views
    left = lab.engine.get(groups[1].uuid)  # Permissive: the group keeps the unmerged ref
    assert [r.device_id for r in left.refs] == [1]
    lab.hv.block_commit = original  # type: ignore[method-assign]
    assert lab.engine.delete(groups[1].uuid).error is None
    assert lab.view_of_vm() == current
    assert [_views(lab, lab.engine.get(g.uuid)) for g in (groups[0], groups[2])] == survivor_views


def test_permissive_failure_midway_keeps_the_group_with_what_remains(lab: Lab) -> None:
    groups = _three_groups(lab, VmState.STOPPED)
    lab.images.fail["commit"] = ImageToolError("I/O error")
    lab.images.fail_after["commit"] = 2
    report = lab.engine.delete(groups[0].uuid)
    assert [r.success for r in report.results] == [True, True, False]
    assert report.error is not None
    left = lab.engine.get(groups[0].uuid)
    assert [r.device_id for r in left.refs] == [2]
    del lab.images.fail["commit"]
    assert lab.engine.delete(groups[0].uuid).error is None


def test_enforcing_with_the_vm_gone_drops_metadata_keeps_files(lab: Lab) -> None:
    groups = _three_groups(lab, VmState.STOPPED)
    del lab.hv.domains[VM]
    files = set(lab.images.images)
    with pytest.raises(OperationError, match="Enforcing"):
        lab.engine.delete(groups[0].uuid)
    report = lab.engine.delete(groups[0].uuid, mode="Enforcing")
    assert not any(r.success for r in report.results)
    assert set(lab.images.images) == files
    assert len(lab.engine.list_groups()) == 2


def test_delete_mode_is_validated(lab: Lab) -> None:
    groups = _three_groups(lab, VmState.STOPPED)
    with pytest.raises(Exception) as err:
        lab.engine.delete(groups[0].uuid, mode="Sloppy")
    assert getattr(err.value, "code", None) == "SYS.1007"
