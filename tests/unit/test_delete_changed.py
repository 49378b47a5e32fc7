"""A merge into a snapshot's file that began and did not complete leaves that file holding
part of a later layer: the snapshot is marked changed (SnapshotRow.changed), also when the
process is killed during the failing commit and `recover` finds it."""

from __future__ import annotations

from typing import Any

import pytest

from snapgroup.domain.errors import ImageToolError
from snapgroup.domain.inventory import Group
from snapgroup.domain.models import BlockJobProgress, VmState
from snapgroup.store.repo import Repo
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Killed, Lab

VM = "a" * 32
ENOSPC = "qemu-img: Block job failed: No space left on device"


def _two_groups(lab: Lab) -> list[Group]:
    lab_domain(lab.hv, state=VmState.STOPPED)
    return lab.take_groups(2)


def _commit_dies_midway(lab: Lab, target_path: str, then: BaseException) -> list[int]:
    """images.commit of `target_path`'s layer copies one cluster into the base, then
    `then` is raised (an ENOSPC, or a simulated SIGKILL). Returns a call counter."""
    original = lab.images.commit
    calls = [0]

    def commit(top: str, *, base: str, progress: Any = None) -> None:
        if top != target_path:
            return original(top, base=base, progress=progress)
        calls[0] += 1
        cluster, value = next(iter(lab.images.images[top].clusters.items()))
        lab.images.images[base].clusters[cluster] = value  # part of the layer is in
        if progress is not None:
            progress(BlockJobProgress(1, 2))
        raise then

    lab.images.commit = commit  # type: ignore[method-assign]
    return calls


def _ref_inventory(lab: Lab, group: str, device_id: int) -> dict[str, Any]:
    refs = lab.engine.get(group).to_inventory()["volumeSnapshotRefs"]
    found: dict[str, Any] = next(r for r in refs if r["deviceId"] == device_id)
    return found


def test_a_commit_failing_midway_marks_its_snapshot_changed_and_the_result_says_so(
    lab: Lab,
) -> None:
    groups = _two_groups(lab)
    current = lab.view_of_vm()
    vdb_layer = groups[1].refs[1].install_path  # g1's vdb snapshot: g0's vdb heir
    _commit_dies_midway(lab, vdb_layer, ImageToolError(ENOSPC))

    report = lab.engine.delete(groups[0].uuid)  # Permissive: the checks pass

    assert [r.success for r in report.results] == [True, False, True]
    failed = report.results[1].error
    assert failed is not None
    assert "was changed" in failed.details and "no longer a valid restore point" in failed.details
    assert lab.view_of_vm() == current  # the current data never moved
    ref = _ref_inventory(lab, groups[0].uuid, 1)
    assert ref["snapshotStatus"] == "Changed" and "did not complete" in ref["statusReason"]
    assert ENOSPC in ref["statusReason"]
    other = _ref_inventory(lab, groups[1].uuid, 1)  # g1's own point in time is untouched
    assert (other["snapshotStatus"], other["statusReason"]) == ("Ready", None)
    status = {s.uuid: s.to_inventory()["status"] for s in lab.engine.list_snapshots("vm1")}
    assert status[groups[0].refs[1].volume_snapshot_uuid] == "Changed"
    assert status[groups[1].refs[1].volume_snapshot_uuid] == "Ready"


def test_killed_during_the_failing_commit_recover_marks_the_base_changed(lab: Lab) -> None:
    groups = _two_groups(lab)
    current = lab.view_of_vm()
    vda_layer = groups[1].refs[0].install_path
    _commit_dies_midway(lab, vda_layer, Killed("SIGKILL during the commit"))
    with pytest.raises(Killed):
        lab.engine.delete(groups[0].uuid)
    # The restarted process: the disk is still full, the commit fails again.
    _commit_dies_midway(lab, vda_layer, ImageToolError(ENOSPC))
    recovered = lab.engine.recover()
    assert [op.kind for op in recovered] == ["delete"]
    assert lab.view_of_vm() == current
    ref = _ref_inventory(lab, groups[0].uuid, 0)
    assert ref["snapshotStatus"] == "Changed" and vda_layer in ref["statusReason"]
    assert [
        r["snapshotStatus"]
        for r in lab.engine.get(groups[0].uuid).to_inventory()["volumeSnapshotRefs"]
    ] == ["Changed"]  # vdb and vdc merged on recovery: only vda's ref is left
    assert lab.engine.recover() == []


def test_killed_during_a_commit_that_recovery_completes_marks_nothing(lab: Lab) -> None:
    groups = _two_groups(lab)
    current = lab.view_of_vm()
    vda_layer = groups[1].refs[0].install_path
    original = lab.images.commit
    _commit_dies_midway(lab, vda_layer, Killed("SIGKILL during the commit"))
    with pytest.raises(Killed):
        lab.engine.delete(groups[0].uuid)
    lab.images.commit = original  # type: ignore[method-assign]
    lab.engine.recover()
    assert [g.uuid for g in lab.engine.list_groups()] == [groups[1].uuid]
    assert lab.view_of_vm() == current
    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        volumes = repo.volumes_of_vm(VM)
        rows = [s for v in volumes for s in repo.snapshots_of_volume(v.uuid)]
    assert rows and all(s.changed is None for s in rows)
