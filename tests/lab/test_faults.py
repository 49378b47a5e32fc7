"""Faults from outside, on the real stack: libvirtd restarted, the VM shut down, a block
job that fails, a full disk, a directory that refuses writes. Each time: a clear error
or a success, never a broken chain, never metadata that disagrees with reality."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.errors import SnapgroupError
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import domblklist, export, fill, same, sh, tmpfs_lab_vm, write_live

pytestmark = pytest.mark.lab
TARGETS = ["vda", "vdb", "vdc"]


def restart_libvirtd() -> None:
    sh("pkill", "-x", "libvirtd", check=False)
    for _ in range(100):
        if sh("pgrep", "-x", "libvirtd", check=False).returncode != 0:
            break
        time.sleep(0.05)
    sh("libvirtd", "-d")
    for _ in range(100):
        if sh("virsh", "-c", "qemu:///system", "version", check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError("libvirtd did not come back")


def snapshot_of_state(vm: LabVm, live: bool, dest: Path) -> dict[str, Path]:
    dest.mkdir(exist_ok=True)
    return {
        t: export(p, dest / f"{t}-{uuid.uuid4().hex}.qcow2")
        for t, p in domblklist(vm.name, inactive=not live).items()
    }


def assert_same_state(vm: LabVm, live: bool, saved: dict[str, Path]) -> None:
    for t, p in domblklist(vm.name, inactive=not live).items():
        assert same(saved[t], p), f"data of {t} changed"


def files(vm: LabVm) -> set[str]:
    return {p.name for p in vm.directory.glob("*.qcow2")}


def with_data(engine: Engine, vm: LabVm) -> list[str]:
    groups = []
    for n in range(2):
        for disk in range(3):
            write_live(vm.name, disk, 0x60 + n, n)
        groups.append(engine.create(vm=vm.name, name=f"g{n}").uuid)
    for disk in range(3):
        write_live(vm.name, disk, 0x70, 0)
    return groups


@pytest.mark.serial
@pytest.mark.parametrize("step", ["create:overlays", "create:switched"])
def test_libvirtd_restarted_during_create(
    engine: Engine, running_vm: LabVm, at_step: Callable[[str, Callable[[], None]], None], step: str
) -> None:
    at_step(step, restart_libvirtd)
    group = engine.create(vm=running_vm.name, name="g")
    assert [r.install_path for r in group.refs] == [str(d) for d in running_vm.disks]
    assert engine.verify(vm=running_vm.name) == []


@pytest.mark.serial
@pytest.mark.parametrize("step", ["delete:merge", "delete:merging"])
def test_libvirtd_restarted_during_delete(
    engine: Engine,
    running_vm: LabVm,
    at_step: Callable[[str, Callable[[], None]], None],
    step: str,
    tmp_path: Path,
) -> None:
    groups = with_data(engine, running_vm)
    saved = snapshot_of_state(running_vm, True, tmp_path / "s")
    at_step(step, restart_libvirtd)
    report = engine.delete(groups[0])
    if report.error is not None:  # the job's watcher lost libvirtd: a retry finishes it
        assert engine.delete(groups[0]).error is None
    assert [g.uuid for g in engine.list_groups()] == [groups[1]]
    assert engine.verify(vm=running_vm.name) == []
    assert_same_state(running_vm, True, saved)


def test_vm_shut_down_during_create(
    engine: Engine, running_vm: LabVm, at_step: Callable[[str, Callable[[], None]], None]
) -> None:
    before, made = domblklist(running_vm.name), files(running_vm)
    at_step("create:overlays", running_vm.stop)
    with pytest.raises(SnapgroupError):
        engine.create(vm=running_vm.name, name="g")
    assert domblklist(running_vm.name, inactive=True) == before
    assert files(running_vm) == made
    assert engine.list_groups() == []
    assert engine.create(vm=running_vm.name, name="g").snapshot_count == 3  # now offline


def test_vm_shut_down_during_delete(
    engine: Engine,
    running_vm: LabVm,
    at_step: Callable[[str, Callable[[], None]], None],
    tmp_path: Path,
) -> None:
    groups = with_data(engine, running_vm)
    saved = snapshot_of_state(running_vm, True, tmp_path / "s")
    at_step("delete:merge", running_vm.stop)
    report = engine.delete(groups[0])
    assert report.error is not None and report.error.code == "VOLUME_SNAPSHOT.1002"
    assert engine.verify(vm=running_vm.name) == []
    assert engine.delete(groups[0]).error is None  # offline now
    assert engine.verify(vm=running_vm.name) == []
    assert_same_state(running_vm, False, saved)


def test_a_failing_block_job_leaves_the_chain_intact(
    engine: Engine, running_vm: LabVm, tmp_path: Path
) -> None:
    groups = with_data(engine, running_vm)
    saved = snapshot_of_state(running_vm, True, tmp_path / "s")
    base = engine.get(groups[1]).refs[1].install_path  # vdb's newest snapshot
    sh("chattr", "+i", base)  # QEMU cannot reopen it read-write: the commit job fails
    try:
        report = engine.delete(groups[1])
    finally:
        sh("chattr", "-i", base)
    assert [r.success for r in report.results] == [True, False, True]
    assert report.results[1].error is not None
    assert [r.device_id for r in engine.get(groups[1]).refs] == [1]  # what is left of it
    assert engine.verify(vm=running_vm.name) == []
    assert_same_state(running_vm, True, saved)
    assert engine.delete(groups[1]).error is None
    assert_same_state(running_vm, True, saved)


@pytest.fixture
def small_disk_vm() -> Iterator[LabVm]:
    """A lab VM whose directory is a 24 MiB tmpfs."""
    with tmpfs_lab_vm("sg-lab", 24, disk_mib=32) as vm:
        yield vm


def test_disk_full_during_overlay_creation(engine: Engine, small_disk_vm: LabVm) -> None:
    before, made = domblklist(small_disk_vm.name), files(small_disk_vm)
    filler = fill(small_disk_vm.directory, 300 << 10)  # room for one overlay, not three
    with pytest.raises(SnapgroupError) as err:
        engine.create(vm=small_disk_vm.name, name="g")
    assert "No space left" in str(err.value.details) or "space" in str(err.value.details)
    assert domblklist(small_disk_vm.name) == before
    assert files(small_disk_vm) == made
    assert engine.list_groups() == []
    filler.unlink()
    assert engine.create(vm=small_disk_vm.name, name="g").snapshot_count == 3


def test_disk_full_during_a_merge(engine: Engine, small_disk_vm: LabVm, tmp_path: Path) -> None:
    vm = small_disk_vm
    group = engine.create(vm=vm.name, name="g")
    for mib in range(6):  # 6 MiB the merge must copy down into the snapshot's file
        write_live(vm.name, 1, 0x80 + mib, mib)
    saved = snapshot_of_state(vm, True, tmp_path / "s")
    fill(vm.directory, 1024 << 10)
    with pytest.raises(SnapgroupError, match="free"):
        engine.delete(group.uuid)  # Permissive: refused by the space check, nothing done
    assert engine.verify(vm=vm.name) == []
    report = engine.delete(group.uuid, mode="Enforcing")  # tries, and the merge runs dry
    assert report.results[1].success is False
    assert engine.verify(vm=vm.name) == []
    assert_same_state(vm, True, saved)


def test_a_directory_that_refuses_writes(engine: Engine, running_vm: LabVm) -> None:
    before, made = domblklist(running_vm.name), files(running_vm)
    sh("chattr", "+i", str(running_vm.directory))
    try:
        with pytest.raises(SnapgroupError) as err:
            engine.create(vm=running_vm.name, name="g")
    finally:
        sh("chattr", "-i", str(running_vm.directory))
    assert err.value.code == "HOST.1003" and "not permitted" in err.value.details
    assert domblklist(running_vm.name) == before
    assert files(running_vm) == made
    assert engine.list_groups() == []
