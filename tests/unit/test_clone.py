"""Clone with the fakes: a new VM on a group's snapshots, pinned against deletes."""

from __future__ import annotations

import pytest

from snapgroup.domain.errors import OperationError
from snapgroup.domain.models import VmState
from snapgroup.ops import journal
from tests.unit.conftest import Killed, Lab
from tests.unit.test_lifecycle import assert_whole, history, views

VM = "a" * 32


def clone_view(lab: Lab, uuid: str) -> list[dict[int, str]]:
    return [lab.images.read(d.path) for d in lab.hv.domains[uuid].disks if d.path]


def test_clone_sits_on_the_group_and_leaves_the_original_alone(lab: Lab) -> None:
    groups = history(lab, VmState.RUNNING)
    original = lab.view_of_vm()
    saved = {g.uuid: views(lab, g) for g in groups}

    made = lab.engine.clone(groups[1].uuid, name="copy", start=True)

    assert made.state == "Running" and made.name == "copy" and made.uuid != VM
    assert clone_view(lab, made.uuid) == saved[groups[1].uuid]
    for disk, ref in zip(made.disks, groups[1].refs, strict=True):
        assert lab.images.images[disk.install_path].backing == ref.install_path
        assert disk.snapshot_uuid == ref.volume_snapshot_uuid
    for d in lab.hv.domains[made.uuid].disks:  # writes to the clone...
        assert d.path is not None
        lab.images.write(d.path, 0, "clone")
    assert lab.view_of_vm() == original  # ...never reach the original
    for g in groups:
        assert views(lab, g) == saved[g.uuid]
    assert_whole(lab)
    # the clone is a VM like any other: it has volumes, and groups of its own
    own = lab.engine.create(vm="copy", name="c0")
    assert own.snapshot_count == 3
    assert lab.engine.delete(own.uuid).error is None
    assert all(v[0].endswith("clone") for v in clone_view(lab, made.uuid))


def test_delete_never_merges_what_a_clone_reads(lab: Lab) -> None:
    groups = history(lab, VmState.RUNNING)
    made = lab.engine.clone(groups[1].uuid, name="copy")
    cloned = clone_view(lab, made.uuid)

    for pinned in (groups[1], groups[0]):  # its snapshots, and everything below them
        with pytest.raises(OperationError, match="read by VM copy's disk"):
            lab.engine.delete(pinned.uuid)
        with pytest.raises(OperationError, match="a clone"):
            lab.engine.delete_snapshot(pinned.refs[0].volume_snapshot_uuid)
    report = lab.engine.delete(groups[1].uuid, mode="Enforcing")
    assert report.error is not None and not any(r.success for r in report.results)
    assert lab.engine.delete(groups[2].uuid).error is None  # above the clone: free
    assert clone_view(lab, made.uuid) == cloned
    assert_whole(lab)


def test_a_removed_clone_releases_the_snapshots(lab: Lab) -> None:
    groups = history(lab, VmState.RUNNING)
    made = lab.engine.clone(groups[0].uuid, name="copy")
    for d in lab.hv.domains[made.uuid].disks:
        assert d.path is not None
        lab.images.remove(d.path)
    del lab.hv.domains[made.uuid]
    kinds = [c.kind for c in lab.engine.sync()]
    assert kinds.count("volume-removed") == 3
    assert lab.engine.delete(groups[0].uuid).error is None
    assert_whole(lab)


def test_an_unavailable_group_is_not_cloned(lab: Lab) -> None:
    groups = history(lab)
    lab.engine.delete_snapshot(groups[0].refs[1].volume_snapshot_uuid)
    with pytest.raises(OperationError, match="unavailable"):
        lab.engine.clone(groups[0].uuid, name="copy")
    assert lab.hv.called("define_clone") == []


@pytest.mark.parametrize("step", ["clone:begin", "clone:overlays", "clone:defined"])
def test_clone_killed_at_every_step(lab: Lab, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    groups = history(lab, VmState.RUNNING)

    def checkpoint(name: str) -> None:
        if name == step:
            raise Killed(name)

    with monkeypatch.context() as patched, pytest.raises(Killed):
        patched.setattr(journal, "checkpoint", checkpoint)
        lab.engine.clone(groups[0].uuid, name="copy")
    (op,) = lab.engine.recover()
    defined = step == "clone:defined"
    assert (op.kind, op.state) == ("clone", "done" if defined else "rolled-back")
    assert ("copy" in {d.name for d in lab.hv.domains.values()}) == defined
    if defined:  # recorded: it pins the group
        with pytest.raises(OperationError, match="a clone"):
            lab.engine.delete(groups[0].uuid)
    else:
        assert lab.engine.delete(groups[0].uuid).error is None
    assert_whole(lab)
