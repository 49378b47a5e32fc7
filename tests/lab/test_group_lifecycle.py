"""Group create and delete on real libvirtd + QEMU + qemu-img (issue: core)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from snapgroup.adapters.libvirt_hv import LibvirtHypervisor
from snapgroup.api import Engine
from snapgroup.domain.errors import HypervisorError, StoreError
from snapgroup.domain.models import DiskOverlay
from snapgroup.ops import creating
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import (
    backing_chain,
    domblklist,
    export,
    reads,
    same,
    write_live,
    write_offline,
)

pytestmark = pytest.mark.lab
TARGETS = ["vda", "vdb", "vdc"]


def _is_live(vm: LabVm) -> bool:
    return vm.name in _running()


def _running() -> str:
    from tests.lab.tools import virsh

    return virsh("list", "--name")


def _write(vm: LabVm, live: bool, disk: int, pattern: int, offset_mib: int) -> None:
    if live:
        write_live(vm.name, disk, pattern, offset_mib)
    else:
        write_offline(domblklist(vm.name, inactive=True)[TARGETS[disk]], pattern, offset_mib)


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.suffix == ".qcow2"}


def test_live_create_moves_every_disk_onto_a_new_overlay(engine: Engine, running_vm: LabVm) -> None:
    before = domblklist(running_vm.name)
    group = engine.create(vm=running_vm.name, name="g1")

    after = domblklist(running_vm.name)
    assert [r.install_path for r in group.refs] == [before[t] for t in TARGETS]
    for target in TARGETS:
        assert after[target] != before[target]
        assert Path(after[target]).name == f"{Path(after[target]).stem}.qcow2"
        assert len(Path(after[target]).stem) == 32  # named by UUID, never by user text
        assert backing_chain(after[target])[:2] == [after[target], before[target]]
        assert oct(os.stat(after[target]).st_mode & 0o077) == "0o0"
    # the persistent definition follows the running domain
    assert domblklist(running_vm.name, inactive=True) == after


def test_stopped_create_updates_the_persistent_definition(
    engine: Engine, stopped_vm: LabVm
) -> None:
    before = domblklist(stopped_vm.name, inactive=True)
    group = engine.create(vm=stopped_vm.name, name="g1")
    after = domblklist(stopped_vm.name, inactive=True)
    assert group.snapshot_count == 3
    for target, ref in zip(TARGETS, group.refs, strict=True):
        assert ref.install_path == before[target]
        assert backing_chain(after[target])[:2] == [after[target], before[target]]


def test_data_written_before_a_snapshot_stays_in_it(engine: Engine, running_vm: LabVm) -> None:
    for disk in range(3):
        write_live(running_vm.name, disk, 0xAA, 0)
    group = engine.create(vm=running_vm.name, name="g1")
    for disk in range(3):
        write_live(running_vm.name, disk, 0xBB, 0)
    tops = domblklist(running_vm.name)
    for disk, ref in enumerate(group.refs):
        assert reads(ref.install_path, 0xAA, 0)
        assert reads(tops[TARGETS[disk]], 0xBB, 0)


@pytest.mark.parametrize("victim", [0, 1, 2], ids=["first", "middle", "last"])
def test_delete_keeps_current_data_and_every_other_restore_point(
    engine: Engine, any_vm: LabVm, victim: int, tmp_path: Path
) -> None:
    live = _is_live(any_vm)
    groups = []
    for n in range(3):
        for disk in range(3):
            _write(any_vm, live, disk, 0x10 + n, 0)  # overwritten by each later point
            _write(any_vm, live, disk, 0x20 + n, 1 + n)  # only from this point on
        groups.append(engine.create(vm=any_vm.name, name=f"g{n}"))
    for disk in range(3):
        _write(any_vm, live, disk, 0x30, 0)
    tops = domblklist(any_vm.name, inactive=not live)
    saved = tmp_path / "saved"
    saved.mkdir()
    expect = {f"now-{t}": export(tops[t], saved / f"now-{t}.qcow2") for t in TARGETS}
    for n, g in enumerate(groups):
        for ref in g.refs:
            expect[f"{n}-{ref.device_id}"] = export(
                ref.install_path, saved / f"{n}-{ref.device_id}.qcow2"
            )

    report = engine.delete(groups[victim].uuid)

    assert report.error is None, report.to_response()
    assert [r.success for r in report.results] == [True] * 3
    tops_after = domblklist(any_vm.name, inactive=not live)
    for t in TARGETS:
        assert same(expect[f"now-{t}"], tops_after[t]), f"current data of {t} changed"
    for n, g in enumerate(groups):
        if n == victim:
            continue
        for ref in engine.get(g.uuid).refs:
            assert os.path.exists(ref.install_path)
            assert same(expect[f"{n}-{ref.device_id}"], ref.install_path), (n, ref.device_id)
    # the chain holds exactly the remaining restore points and the current top
    for t in TARGETS:
        assert len(backing_chain(tops_after[t])) == 3
    assert len(_files(Path(tops_after["vda"]).parent)) == 3 * 3
    assert [g.uuid for g in engine.list_groups(vm=any_vm.name)] == [
        g.uuid for n, g in enumerate(groups) if n != victim
    ]


def test_deleting_every_group_returns_the_vm_to_its_original_files(
    engine: Engine, any_vm: LabVm
) -> None:
    live = _is_live(any_vm)
    original = domblklist(any_vm.name, inactive=not live)
    groups = [engine.create(vm=any_vm.name, name=f"g{n}") for n in range(2)]
    for g in groups:
        assert engine.delete(g.uuid).error is None
    assert domblklist(any_vm.name, inactive=not live) == original
    assert domblklist(any_vm.name, inactive=True) == original
    assert _files(Path(original["vda"]).parent) == {Path(p).name for p in original.values()}


class _OneOverlayMissing(LibvirtHypervisor):
    """Points the real atomic snapshot at a file that does not exist, so libvirt fails
    for real after the engine created every overlay."""

    def snapshot_disks(
        self, vm_uuid: str, overlays: list[DiskOverlay], *, quiesce: bool = False
    ) -> None:
        broken = [
            *overlays[:-1],
            DiskOverlay(
                overlays[-1].target, overlays[-1].current, overlays[-1].overlay + ".missing"
            ),
        ]
        super().snapshot_disks(vm_uuid, broken, quiesce=quiesce)


def test_failed_live_snapshot_leaves_everything_as_before(
    engine: Engine, running_vm: LabVm
) -> None:
    before = domblklist(running_vm.name)
    files = _files(Path(before["vda"]).parent)
    engine.hv = _OneOverlayMissing("qemu:///system")
    with pytest.raises(HypervisorError):
        engine.create(vm=running_vm.name, name="g1")
    assert domblklist(running_vm.name) == before
    assert _files(Path(before["vda"]).parent) == files
    assert engine.list_groups() == []


def test_failure_to_record_undoes_a_live_snapshot(
    engine: Engine, running_vm: LabVm, mocker: MockerFixture
) -> None:
    write_live(running_vm.name, 1, 0xAA, 0)
    before = domblklist(running_vm.name)
    files = _files(Path(before["vda"]).parent)
    mocker.patch.object(creating, "_record_group", autospec=True, side_effect=StoreError("down"))
    with pytest.raises(StoreError):
        engine.create(vm=running_vm.name, name="g1")
    assert domblklist(running_vm.name) == before
    assert _files(Path(before["vda"]).parent) == files
    assert reads(before["vdb"], 0xAA, 0)


def test_offline_delete_then_start_boots_on_the_merged_chain(
    engine: Engine, running_vm: LabVm, tmp_path: Path
) -> None:
    """libvirt stores a <backingStore> chain in the persistent definition after a live
    snapshot and trusts it at the next start: an offline merge must rewrite it."""
    groups = []
    for n in range(3):
        write_live(running_vm.name, 1, 0x50 + n, n)
        groups.append(engine.create(vm=running_vm.name, name=f"g{n}"))
    running_vm.stop()
    top = domblklist(running_vm.name, inactive=True)["vdb"]
    saved = export(top, tmp_path / "now.qcow2")
    assert engine.delete(groups[1].uuid).error is None
    running_vm.start()
    live_top = domblklist(running_vm.name)["vdb"]
    assert live_top == top
    assert same(saved, live_top)
    from snapgroup.adapters.domxml import parse_domain
    from snapgroup.domain.models import VmState
    from tests.lab.tools import virsh

    disk = next(
        d
        for d in parse_domain(virsh("dumpxml", running_vm.name), VmState.RUNNING).disks
        if d.target == "vdb"
    )
    assert [disk.path, *disk.backing] == backing_chain(live_top)
    assert len(backing_chain(live_top)) == 3
