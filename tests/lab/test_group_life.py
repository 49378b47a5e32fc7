"""A group's whole life on real libvirtd + QEMU + qemu-img: revert (also to an older
group, partially, with --stop), merges in the resulting trees live and offline, check
after attach/detach, single snapshot deletes, tree output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.errors import OperationError
from snapgroup.domain.inventory import Group, zstack_date
from snapgroup.domain.planner import expected_chain
from snapgroup.store.repo import Repo
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import (
    backing_chain,
    domblklist,
    export,
    reads,
    same,
    sh,
    virsh,
    write_live,
    write_offline,
)

pytestmark = pytest.mark.lab
TARGETS = ["vda", "vdb", "vdc"]


def tops(vm: LabVm, *, live: bool = False) -> dict[str, str]:
    return domblklist(vm.name, inactive=not live)


def write(vm: LabVm, pattern: int, offset_mib: int, *, live: bool = False) -> None:
    for disk, target in enumerate(TARGETS):
        if live:
            write_live(vm.name, disk, pattern, offset_mib)
        else:
            write_offline(tops(vm)[target], pattern, offset_mib)


def three_groups(engine: Engine, vm: LabVm) -> list[Group]:
    """g0..g2 on a stopped VM: MiB 0 holds 0x10+k at group k, MiB 1+k only from k on;
    then MiB 0 = 0x30 now."""
    groups = []
    for k in range(3):
        write(vm, 0x10 + k, 0)
        write(vm, 0x20 + k, 1 + k)
        groups.append(engine.create(vm=vm.name, name=f"g{k}"))
    write(vm, 0x30, 0)
    return groups


def save_views(engine: Engine, vm: LabVm, dest: Path, *, live: bool = False) -> dict[str, Path]:
    """Standalone copies of every point in time: now-<target>, <snapshot uuid>."""
    dest.mkdir(exist_ok=True)
    saved = {f"now-{t}": export(p, dest / f"now-{t}.qcow2") for t, p in tops(vm, live=live).items()}
    for g in engine.list_groups():
        for ref in g.refs:
            if not ref.snapshot_deleted:
                saved[ref.volume_snapshot_uuid] = export(
                    ref.install_path, dest / f"{ref.volume_snapshot_uuid}.qcow2"
                )
    return saved


def assert_points_kept(engine: Engine, saved: dict[str, Path]) -> None:
    for g in engine.list_groups():
        for ref in g.refs:
            if ref.volume_snapshot_uuid in saved and not ref.snapshot_deleted:
                assert same(saved[ref.volume_snapshot_uuid], ref.install_path), (g.name, ref)


def assert_vm_is(vm: LabVm, saved: dict[str, Path], group: Group, *, live: bool = False) -> None:
    now = tops(vm, live=live)
    for ref, target in zip(group.refs, TARGETS, strict=True):
        assert same(saved[ref.volume_snapshot_uuid], now[target]), f"{target} is not {group.name}"


def assert_tree_whole(engine: Engine, vm: LabVm, *, live: bool = False) -> None:
    """Metadata = domain = every real chain, on every branch; no file left over."""
    disks = tops(vm, live=live)
    files: set[str] = set()
    with engine.db.transaction() as session:
        repo = Repo(session)
        for volume in repo.volumes_of_vm(vm.uuid, attached_only=True):
            assert disks[volume.target] == volume.install_path
            lineage = repo.lineage(volume)
            assert backing_chain(volume.install_path) == expected_chain(volume, lineage)
            by_uuid = {s.uuid: s for s in lineage}
            for s in lineage:
                parent = by_uuid.get(s.parent_uuid or "")
                expected = [s.install_path]
                while parent is not None:
                    expected.append(parent.install_path)
                    parent = by_uuid.get(parent.parent_uuid or "")
                assert backing_chain(s.install_path) == expected, s.uuid
                files.add(s.install_path)
            files.add(volume.install_path)
    assert {str(p) for p in vm.directory.glob("*.qcow2")} == files
    assert [op for op in engine.operations() if op.state == "running"] == []


def test_revert_to_the_first_of_three_then_to_the_later_ones(
    engine: Engine, stopped_vm: LabVm, tmp_path: Path
) -> None:
    vm = stopped_vm
    groups = three_groups(engine, vm)
    saved = save_views(engine, vm, tmp_path / "saved")

    report = engine.revert(groups[0].uuid)

    assert report.error is None, report.to_response()
    assert [r.success for r in report.results] == [True] * 3
    assert_vm_is(vm, saved, groups[0])
    for target in TARGETS:  # data written after g0 is gone from the VM...
        assert not reads(tops(vm)[target], 0x21, 2)
    safety = report.safety_group
    assert safety is not None  # ...and kept in the safety group
    for ref, target in zip(safety.refs, TARGETS, strict=True):
        assert same(saved[f"now-{target}"], ref.install_path)
    assert_points_kept(engine, saved)
    assert_tree_whole(engine, vm)
    # the later groups still revert correctly (no safety group: their data is kept anyway)
    for g in (groups[2], groups[1]):
        assert engine.revert(g.uuid, safety_group=False).error is None
        assert_vm_is(vm, saved, g)
        assert_points_kept(engine, saved)
        assert_tree_whole(engine, vm)
    # libvirt boots the reverted chain: the running VM reads g1's data
    vm.start()
    for target in TARGETS:
        assert reads(tops(vm, live=True)[target], 0x11, 0)


def test_revert_is_refused_while_running_and_stop_does_it(
    engine: Engine, running_vm: LabVm, tmp_path: Path
) -> None:
    vm = running_vm
    write(vm, 0x41, 0, live=True)
    group = engine.create(vm=vm.name, name="g")
    write(vm, 0x42, 0, live=True)
    before = tops(vm, live=True)
    with pytest.raises(OperationError, match="needs it stopped"):
        engine.revert(group.uuid)
    assert tops(vm, live=True) == before
    assert "running" in virsh("domstate", vm.name)

    report = engine.revert(group.uuid, stop=True, stop_timeout=1)  # ACPI, then off

    assert report.error is None
    assert "shut off" in virsh("domstate", vm.name)
    for target in TARGETS:
        assert reads(tops(vm)[target], 0x41, 0)
    assert_tree_whole(engine, vm)


def test_partial_revert_of_an_unavailable_group(
    engine: Engine, stopped_vm: LabVm, tmp_path: Path
) -> None:
    vm = stopped_vm
    groups = three_groups(engine, vm)
    saved = save_views(engine, vm, tmp_path / "saved")
    gone = groups[0].refs[2]
    assert engine.delete_snapshot(gone.volume_snapshot_uuid).success
    (state,) = engine.check([groups[0].uuid])
    assert not state.available and gone.volume_snapshot_uuid in (state.reason or "")
    with pytest.raises(OperationError, match="unavailable"):
        engine.revert(groups[0].uuid)

    keep = [r.volume_uuid for r in groups[0].refs[:2]]
    report = engine.revert(groups[0].uuid, volumes=keep)

    assert [r.volume_uuid for r in report.results] == keep
    now = tops(vm)
    for ref in groups[0].refs[:2]:
        assert same(saved[ref.volume_snapshot_uuid], now[TARGETS[ref.device_id]])
    assert same(saved["now-vdc"], now["vdc"])  # untouched
    assert_points_kept(engine, saved)
    assert_tree_whole(engine, vm)


def test_delete_in_a_tree(engine: Engine, any_vm: LabVm, tmp_path: Path) -> None:
    """g0 -> g1 -> g2 -> safety, the VM back on g1 and written to. Deleted in turn:
    g1 (two children: g2's file rebased onto g0's, which a running QEMU holds, then the
    VM's top committed down), g2 (off the VM's branch: its only child committed into it
    with qemu-img), g0 (two children again: one made standalone), the safety group (a
    leaf by then)."""
    vm = any_vm
    live = "running" in virsh("domstate", vm.name)
    vm.stop()
    groups = three_groups(engine, vm)
    report = engine.revert(groups[1].uuid)
    assert report.safety_group is not None
    if live:
        vm.start()
    write(vm, 0x50, 5, live=live)
    saved = save_views(engine, vm, tmp_path / "saved", live=live)

    for victim in (groups[1], groups[2], groups[0], report.safety_group):
        result = engine.delete(victim.uuid)

        assert result.error is None, (victim.name, result.to_response())
        for target in TARGETS:
            assert same(saved[f"now-{target}"], tops(vm, live=live)[target])
        assert_points_kept(engine, saved)
        assert_tree_whole(engine, vm, live=live)
    assert engine.list_groups() == []
    if live:  # the guest keeps writing to the merged chain
        write(vm, 0x51, 6, live=True)
        for target in TARGETS:
            assert reads(tops(vm, live=True)[target], 0x51, 6)
    else:  # and libvirt starts on it
        vm.start()
        vm.stop()


def _attach(vm: LabVm, target: str) -> str:
    path = vm.directory / f"extra-{target}.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M")
    virsh(
        "attach-disk",
        vm.name,
        str(path),
        target,
        "--driver",
        "qemu",
        "--subdriver",
        "qcow2",
        "--config",
    )
    return str(path)


def test_attach_and_detach_a_data_disk_between_groups(engine: Engine, stopped_vm: LabVm) -> None:
    vm = stopped_vm
    g0 = engine.create(vm=vm.name, name="g0")
    _attach(vm, "vdd")
    g1 = engine.create(vm=vm.name, name="g1")
    assert g1.snapshot_count == 4
    r0, r1 = engine.check([g0.uuid, g1.uuid])
    assert not r0.available and "vdd) is attached now but not in the group" in (r0.reason or "")
    assert r1.available
    vdd_top = tops(vm)["vdd"]
    virsh("detach-disk", vm.name, "vdd", "--config")
    r0, r1 = engine.check([g0.uuid, g1.uuid])
    assert r0.available  # the VM has g0's volumes again
    assert not r1.available and "is no longer attached" in (r1.reason or "")
    virsh(
        "attach-disk",
        vm.name,
        vdd_top,
        "vdd",
        "--driver",
        "qemu",
        "--subdriver",
        "qcow2",
        "--config",
    )
    assert [r.available for r in engine.check([g0.uuid, g1.uuid])] == [False, True]
    # detached and its file deleted: removed; its ref is snapshotDeleted, files kept
    virsh("detach-disk", vm.name, "vdd", "--config")
    Path(vdd_top).unlink()
    (r1,) = engine.check([g1.uuid])
    assert "was deleted" in (r1.reason or "")
    assert [r.snapshot_deleted for r in engine.get(g1.uuid).refs] == [False] * 3 + [True]
    assert Path(engine.get(g1.uuid).refs[3].install_path).exists()


def test_tree_output_for_a_known_history(engine: Engine, stopped_vm: LabVm) -> None:
    vm = stopped_vm
    groups = three_groups(engine, vm)
    report = engine.revert(groups[1].uuid)
    assert report.safety_group is not None
    g3 = engine.create(vm=vm.name, name="g3")
    out = subprocess.run(
        [sys.executable, "-m", "snapgroup", "--db", engine.db.url, "tree", "--vm", vm.name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    g0, g1, g2 = groups
    s = report.safety_group

    def line(g: Group) -> str:
        return f"{g.name}  {g.uuid}  {zstack_date(g.create_date)}"

    assert out == (
        f"VM {vm.name} ({vm.uuid})\n"
        f"{line(g0)}\n"
        f"└── {line(g1)}\n"
        f"    ├── {line(g2)}\n"
        f"    │   └── {line(s)}\n"
        f"    └── {line(g3)}  <- current\n"
    )
