"""Delete on a nearly full filesystem, on real libvirtd + QEMU (issue 11, parts 1 and 4).

A running VM whose three qcow2 disks share one 48 MiB tmpfs: a delete whose merges do
not fit together is refused up front with the figures, changing nothing; a commit that
runs dry midway (the filesystem filled from outside once the merge has begun) marks the
snapshot it wrote into as changed, and its group unavailable. And a group whose snapshot
file on a side branch is gone can still be deleted (Enforcing) or refused with its
per-ref results (Permissive)."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.inventory import Group
from snapgroup.ops.delete import DeleteRefused
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import (
    domblklist,
    export,
    fill,
    free_bytes,
    reads,
    same,
    sh,
    tmpfs_lab_vm,
    write_live,
    write_offline,
)

pytestmark = pytest.mark.lab
MIB = 1 << 20


@pytest.fixture
def tmpfs_vm() -> Iterator[LabVm]:
    """A running lab VM whose disks (root, data1, data2) live on a 48 MiB tmpfs."""
    with tmpfs_lab_vm("sg-space", 48) as vm:
        yield vm


def exports(groups: list[Group], dest: Path) -> dict[str, Path]:
    """A standalone copy of the view each ref's file presents, by snapshot uuid."""
    dest.mkdir(exist_ok=True)
    return {
        r.volume_snapshot_uuid: export(r.install_path, dest / f"{uuid.uuid4().hex}.qcow2")
        for g in groups
        for r in g.refs
    }


def assert_unchanged(engine: Engine, groups: list[Group], saved: dict[str, Path]) -> None:
    """Every ref of those groups still presents the view it had (wherever its file is
    now: a merge below moves a later snapshot's file to its parent's path)."""
    for g in groups:
        refs = engine.get(g.uuid).refs
        assert len(refs) == len(g.refs)
        for r in refs:
            assert same(saved[r.volume_snapshot_uuid], r.install_path), f"{r.install_path}"


def test_merges_that_fit_alone_but_not_together_are_refused_up_front(
    engine: Engine, tmpfs_vm: LabVm, tmp_path: Path
) -> None:
    vm = tmpfs_vm
    groups = []
    for n in range(3):  # each layer adds 2 MiB per disk
        for disk in range(3):
            write_live(vm.name, disk, 0x40 + n, 2 * n)
            write_live(vm.name, disk, 0x50 + n, 2 * n + 1)
        groups.append(engine.create(vm=vm.name, name=f"g{n}"))
    # The figures: what the three merges of deleting the oldest group need together.
    filler = fill(vm.directory, 64 << 10)
    with pytest.raises(DeleteRefused) as err:
        engine.delete(groups[0].uuid)
    figures = re.search(r"need (\d+) bytes together", err.value.details)
    assert figures is not None
    together = int(figures.group(1))
    one = together // 3
    assert one > 2 * MIB  # the data plus the qcow2 metadata margin
    filler.unlink()
    filler = fill(vm.directory, one + one // 2)  # each merge alone would fit
    before_disks = domblklist(vm.name)
    saved = exports(groups, tmp_path / "before")
    free = free_bytes(vm.directory)
    assert one < free < together

    with pytest.raises(DeleteRefused) as err:
        engine.delete(groups[0].uuid)  # Permissive

    assert err.value.code == "SYS.1006"
    message = err.value.details
    assert f"need {together} bytes together" in message and "free" in message
    results = err.value.report.to_response()
    assert [r["success"] for r in results["results"]] == [False, False, False]
    assert all("bytes together" in r["error"]["details"] for r in results["results"])
    assert results["error"]["code"] == "SYS.1006"
    assert domblklist(vm.name) == before_disks
    assert_unchanged(engine, groups, saved)
    assert [g.uuid for g in engine.list_groups()] == [g.uuid for g in groups]
    assert all(
        r.to_inventory()["snapshotStatus"] == "Ready" for g in engine.list_groups() for r in g.refs
    )
    filler.unlink()
    assert engine.delete(groups[0].uuid).error is None  # with the room back, it merges
    assert_unchanged(engine, groups[1:], saved)


def test_a_commit_that_runs_dry_midway_marks_the_group_changed_and_unavailable(
    engine: Engine,
    tmpfs_vm: LabVm,
    tmp_path: Path,
    at_step: Callable[[str, Callable[[], None]], None],
) -> None:
    vm = tmpfs_vm
    write_live(vm.name, 1, 0x11, 0)
    g0 = engine.create(vm=vm.name, name="g0")
    for mib in range(2, 10):  # the layer the merge commits into g0's vdb file: 8 MiB
        write_live(vm.name, 1, 0x22, mib)
    g1 = engine.create(vm=vm.name, name="g1")
    write_live(vm.name, 1, 0x33, 12)
    g2 = engine.create(vm=vm.name, name="g2")
    write_live(vm.name, 1, 0x44, 14)  # the current top
    before_disks = domblklist(vm.name)
    saved = exports([g1, g2], tmp_path / "before")
    vdb_base = g0.refs[1].install_path
    g0_vdb = export(vdb_base, tmp_path / "g0-vdb.qcow2")
    # Once the checks passed and the commit into g0's vdb file is about to start, the
    # filesystem fills up from outside: 1 MiB left for an 8 MiB commit.
    fillers: list[Path] = []
    at_step("delete:merge", lambda: fillers.append(fill(vm.directory, MIB)))

    report = engine.delete(g0.uuid)  # Permissive

    assert fillers, "the merge never started"
    by_target = dict(zip(["vda", "vdb", "vdc"], report.results, strict=True))
    assert by_target["vda"].success and by_target["vdc"].success
    failed = by_target["vdb"].error
    assert failed is not None and not by_target["vdb"].success
    assert "was changed" in failed.details
    assert f"group {g0.uuid} is no longer a valid restore point" in failed.details
    assert not same(g0_vdb, vdb_base)  # the commit did write part of g1's layer there
    # Marked: the inventory, check and revert all say so.
    ref = engine.get(g0.uuid).to_inventory()["volumeSnapshotRefs"]
    assert [(r["deviceId"], r["snapshotStatus"]) for r in ref] == [(1, "Changed")]
    assert "did not complete" in ref[0]["statusReason"]
    (availability,) = engine.check([g0.uuid])
    assert availability.available is False
    assert availability.reason is not None and "changed" in availability.reason
    # Nothing else moved: the current data, the other restore points, the VM's disks.
    top = domblklist(vm.name)["vdb"]
    assert top == before_disks["vdb"]
    for pattern, mib in ((0x11, 0), (0x22, 2), (0x22, 9), (0x33, 12), (0x44, 14)):
        assert reads(top, pattern, mib), f"current data at MiB {mib}"
    assert_unchanged(engine, [g1, g2], saved)
    for g in (g1, g2):
        assert all(
            r["snapshotStatus"] == "Ready"
            for r in engine.get(g.uuid).to_inventory()["volumeSnapshotRefs"]
        )
    assert sh("virsh", "-c", "qemu:///system", "domstate", vm.name).stdout.strip() == "running"
    for filler in fillers:
        filler.unlink()


def test_a_group_whose_side_branch_file_is_gone_can_still_be_deleted(
    engine: Engine, stopped_vm: LabVm, tmp_path: Path
) -> None:
    vm = stopped_vm
    write_offline(str(vm.disks[1]), 0x61, 0)
    g1 = engine.create(vm=vm.name, name="g1")
    write_offline(domblklist(vm.name, inactive=True)["vdb"], 0x62, 1)
    g2 = engine.create(vm=vm.name, name="g2")
    write_offline(domblklist(vm.name, inactive=True)["vdb"], 0x63, 2)
    assert engine.revert(g1.uuid).error is None  # a safety group of the present is taken
    moved_from = g2.refs[1].install_path
    moved = shutil.move(moved_from, tmp_path / "away.qcow2")
    try:
        disks, files = domblklist(vm.name, inactive=True), sorted(vm.directory.glob("*.qcow2"))

        with pytest.raises(DeleteRefused) as err:
            engine.delete(g2.uuid)  # Permissive: refused, every ref's result says why

        results = err.value.report.results
        assert [r.success for r in results] == [False, False, False]
        assert results[1].error is not None and f"{moved_from} is missing" in (
            results[1].error.details
        )
        assert all(
            r.error is not None and "not attempted" in r.error.details
            for r in (results[0], results[2])
        )
        assert domblklist(vm.name, inactive=True) == disks
        assert sorted(vm.directory.glob("*.qcow2")) == files
        assert g2.uuid in [g.uuid for g in engine.list_groups()]

        report = engine.delete(g2.uuid, mode="Enforcing")  # every snapshot attempted

        assert [r.success for r in report.results] == [True, False, True]
        assert report.results[1].error is not None
        assert "is missing" in report.results[1].error.details
        assert g2.uuid not in [g.uuid for g in engine.list_groups()]
        assert domblklist(vm.name, inactive=True) == disks
        current = domblklist(vm.name, inactive=True)["vdb"]
        assert reads(current, 0x61, 0)  # the reverted present is g1's point in time
    finally:
        shutil.move(moved, moved_from)
