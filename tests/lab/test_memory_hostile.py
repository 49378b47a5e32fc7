"""Memory groups tried as a hostile tester would, on the real stack (libvirt 9.0 + QEMU
under TCG): a save that runs the filesystem dry after the space check, a kept group's
memory file changed, truncated, moved away or made a FIFO, a restore that fails
halfway, a VM renamed since its memory group, a raw data disk, a paused VM, the group
below a memory group deleted. Kill -9: tests/lab/test_memory_kills.py.

One lab VM for the module (idling in firmware: its memory state is saved and restored
like any guest's, and it boots at once), its three disks and memory files on one tmpfs
that the space tests fill. Each test leaves the VM running with its files checked."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.errors import OperationError, SnapgroupError
from snapgroup.testing.labvm import LabVm
from tests.lab.memory_tools import (
    TMPFS_MIB,
    assert_clean,
    assert_intact,
    files,
    module_engine,
    state,
    views,
)
from tests.lab.tools import (
    domblklist,
    export,
    fill,
    same,
    sh,
    tmpfs_lab_vm,
    write_live,
)

# One xdist worker a module: one VM booted, not one a worker.
pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("memory-hostile")]


@pytest.fixture(scope="module")
def vm() -> Iterator[LabVm]:
    with tmpfs_lab_vm("sg-memh", TMPFS_MIB) as lab:
        yield lab


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with module_engine("sg-lab-memh-") as eng:
        yield eng


@pytest.fixture(scope="module")
def clones_files() -> set[str]:
    """The files of the clones made so far (each undefined after its test)."""
    return set()


@pytest.mark.parametrize("live", [False, True], ids=["paused", "live"])
def test_a_save_that_runs_dry_after_the_check_leaves_nothing(
    vm: LabVm,
    engine: Engine,
    at_step: Callable[[str, Callable[[], None]], None],
    tmp_path: Path,
    live: bool,
) -> None:
    for disk in range(3):
        write_live(vm.name, disk, 0x61, disk)
    earlier = [engine.create(vm=vm.name, name=f"mem-before-{live}", with_memory=True)]
    for disk in range(3):
        write_live(vm.name, disk, 0x62, 4 + disk)
    earlier.append(engine.create(vm=vm.name, name=f"disk-before-{live}"))
    earlier = engine.list_groups(vm=vm.name)
    saved = views(earlier, tmp_path / "views")
    before, tops = files(vm.directory), domblklist(vm.name)

    # Another writer takes the room once the check passed and the overlays are made.
    def another_writer() -> None:
        fill(vm.directory, 64 << 10)

    at_step("create:overlays", another_writer)
    with pytest.raises(SnapgroupError) as err:
        engine.create(vm=vm.name, name="dry", with_memory=True, live=live)
    print(f"\n{err.value.code}: {err.value.details}")
    assert err.value.code in ("HOST.1002", "SYS.1006")
    assert state(vm.name) == "running" and domblklist(vm.name) == tops
    assert [g.uuid for g in engine.list_groups(vm=vm.name)] == [g.uuid for g in earlier]
    assert files(vm.directory) - {"filler"} == before  # nothing the failed create made
    (vm.directory / "filler").unlink()
    assert engine.recover() == []
    assert_intact(engine, earlier, saved)
    assert_clean(engine, vm)


def _flip(path: str) -> Callable[[], None]:
    """A byte flipped in the middle of the file; the undo puts it back."""
    offset = os.path.getsize(path) // 2
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))

    def undo() -> None:
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(byte)

    return undo


def _truncate(path: str) -> Callable[[], None]:
    keep = path + ".keep"
    shutil.copyfile(path, keep)
    os.truncate(path, os.path.getsize(path) // 2)
    return lambda: os.replace(keep, path)


def _move(path: str) -> Callable[[], None]:
    away = path + ".away"
    os.rename(path, away)
    return lambda: os.rename(away, path)


def _fifo(path: str) -> Callable[[], None]:
    """A FIFO in the file's place (its open blocked `check` for ever); the undo puts the
    file back."""
    away = path + ".away"
    os.rename(path, away)
    os.mkfifo(path)

    def undo() -> None:
        os.unlink(path)
        os.rename(away, path)

    return undo


@pytest.mark.parametrize("damage", [_flip, _fifo, _truncate, _move])
def test_a_damaged_memory_file_refuses_the_revert_before_the_vm_is_touched(
    vm: LabVm, engine: Engine, tmp_path: Path, damage: Callable[[str], Callable[[], None]]
) -> None:
    for disk in range(3):
        write_live(vm.name, disk, 0x70, 8 + disk)
    group = engine.create(vm=vm.name, name=f"damaged-{damage.__name__}", with_memory=True)
    assert group.memory is not None
    for disk in range(3):
        write_live(vm.name, disk, 0x71, 12 + disk)
    kept = [g for g in engine.list_groups(vm=vm.name) if g.uuid != group.uuid]
    saved = views([group, *kept], tmp_path / "views")
    tops = domblklist(vm.name)
    current = {t: export(p, tmp_path / f"top-{t}.qcow2") for t, p in tops.items()}

    undo = damage(group.memory.file)
    state_now = engine.check([group.uuid])[0]
    assert not state_now.available and group.memory.file in (state_now.reason or "")
    found = [d for d in engine.verify(vm=vm.name) if group.memory.file in d.detail]
    kind = "memory-missing" if damage is _move else "memory-changed"
    assert [d.kind for d in found] == [kind], found
    with pytest.raises(OperationError) as err:
        engine.revert(group.uuid, stop=True, stop_timeout=0)
    print(f"\n{damage.__name__}: {err.value.code}: {err.value.details}")
    assert group.memory.file in err.value.details
    # The running VM was not touched: still running, on the same files, same data.
    assert state(vm.name) == "running" and domblklist(vm.name) == tops
    assert all(same(current[t], p) for t, p in tops.items())
    assert [g.name for g in engine.list_groups(vm=vm.name)] == [g.name for g in [*kept, group]]
    undo()
    assert engine.check([group.uuid])[0].available  # put back as it was: usable again
    if damage is _truncate:  # the last one: damaged again, its delete still merges it away
        _truncate(group.memory.file)
        os.unlink(group.memory.file + ".keep")
        report = engine.delete(group.uuid)
        assert report.error is None, report.to_response()
        assert not os.path.exists(group.memory.file)
        assert [g.uuid for g in engine.list_groups(vm=vm.name)] == [g.uuid for g in kept]
        assert all(same(current[t], p) for t, p in domblklist(vm.name).items())
    assert_intact(engine, kept, saved)
    assert_clean(engine, vm)


def _qemu_pid(name: str) -> int | None:
    try:
        return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _incoming(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"-incoming" in argv and any(a.endswith(b"qemu-system-x86_64") for a in argv)


def _kill_qemu_once_started(name: str) -> threading.Thread:
    """A thread that SIGKILLs the domain's QEMU once it runs, waiting for the incoming
    state (the restore's)."""

    def run() -> None:
        for _ in range(20000):
            pid = _qemu_pid(name)
            if pid is not None and _incoming(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.001)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("how", ["truncated", "qemu-killed"])
def test_a_restore_that_fails_halfway_leaves_the_vm_on_its_old_disks(
    vm: LabVm,
    engine: Engine,
    at_step: Callable[[str, Callable[[], None]], None],
    tmp_path: Path,
    how: str,
) -> None:
    for disk in range(3):
        write_live(vm.name, disk, 0x80, 16 + disk)
    group = engine.create(vm=vm.name, name=f"restore-{how}", with_memory=True)
    assert group.memory is not None
    for disk in range(3):
        write_live(vm.name, disk, 0x81, 20 + disk)
    groups = engine.list_groups(vm=vm.name)
    saved = views(groups, tmp_path / "views")
    sh("virsh", "-c", "qemu:///system", "destroy", vm.name)  # the revert's stop, done here
    tops = domblklist(vm.name, inactive=True)
    current = {t: export(p, tmp_path / f"top-{t}.qcow2") for t, p in tops.items()}
    before = files(vm.directory)
    undo: list[Callable[[], None]] = []
    killer: list[threading.Thread] = []
    memory_file = group.memory.file
    if how == "truncated":  # after the checks passed: the restore reads half a file
        at_step("revert:restoring", lambda: undo.append(_truncate(memory_file)))
    else:
        at_step("revert:restoring", lambda: killer.append(_kill_qemu_once_started(vm.name)))
    report = engine.revert(group.uuid, safety_group=False)
    for thread in killer:
        thread.join()
    for put_back in undo:
        put_back()
    error = report.error
    print(f"\n{how}: {error and error.details}; cause {error and error.cause}")
    if report.error is None:  # QEMU was killed only once the restore had finished
        assert how == "qemu-killed"
        pytest.skip("the restore finished before QEMU could be killed")
    # Stopped where it was: its definition on the old disks, their data as it was,
    # the new overlays gone, no file left behind, the group unchanged and usable.
    assert state(vm.name) == "shut off"
    assert domblklist(vm.name, inactive=True) == tops
    assert all(same(current[t], p) for t, p in tops.items())
    assert files(vm.directory) == before
    assert engine.recover() == []
    assert_intact(engine, groups, saved)
    # and the revert can be tried again: it resumes the VM
    again = engine.revert(group.uuid, safety_group=False)
    assert again.error is None and again.resumed == "Running", again.to_response()
    assert state(vm.name) == "running"
    assert_clean(engine, vm)


def test_clone_start_whose_state_copy_runs_dry_leaves_no_copy(
    vm: LabVm,
    engine: Engine,
    at_step: Callable[[str, Callable[[], None]], None],
    restored: list[str],
    clones_files: set[str],
) -> None:
    group = engine.create(vm=vm.name, name="clone-dry", with_memory=True)
    assert group.memory is not None
    before, tops = files(vm.directory), domblklist(vm.name)

    def another_writer() -> None:  # once the copy's room was checked
        fill(vm.directory, 64 << 10)

    at_step("resume-state:begin", another_writer)
    name = f"{vm.name}-dry"
    restored.append(name)
    with pytest.raises(OperationError) as err:
        engine.clone(group.uuid, name=name, start=True)
    print(f"\n{err.value.code}: {err.value.details}")
    assert "made but not resumed" in err.value.details and "space" in err.value.details
    (vm.directory / "filler").unlink()
    assert state(vm.name) == "running" and domblklist(vm.name) == tops
    assert state(name) == "shut off"  # made, not resumed: `start` boots it
    clone_files = {os.path.basename(p) for p in domblklist(name).values()}
    assert files(vm.directory) == before | clone_files  # no copy of the state left
    clones_files.update(clone_files)
    assert engine.recover() == []
    assert engine.check([group.uuid])[0].available


def test_revert_of_a_memory_group_after_the_vm_was_renamed(
    vm: LabVm, engine: Engine, clones_files: set[str]
) -> None:
    """libvirt 9.0 restores a saved state only under the name it was saved with (the
    restore failed after the stop: 'Target domain name ... does not match source'):
    refused before --stop touches the VM; renamed back, the revert resumes it."""
    group = engine.create(vm=vm.name, name="before-rename", with_memory=True)
    virsh = ("virsh", "-c", "qemu:///system")
    renamed = f"{vm.name}-renamed"
    sh(*virsh, "destroy", vm.name)
    sh(*virsh, "domrename", vm.name, renamed)
    try:
        sh(*virsh, "start", renamed)
        tops = domblklist(renamed)
        with pytest.raises(OperationError) as err:
            engine.revert(group.uuid, stop=True, stop_timeout=0)
        print(f"\n{err.value.code}: {err.value.details}")
        assert f"domrename {renamed} {vm.name}" in err.value.details
        assert state(renamed) == "running" and domblklist(renamed) == tops
    finally:
        sh(*virsh, "destroy", renamed, check=False)
        sh(*virsh, "domrename", renamed, vm.name)
    report = engine.revert(group.uuid, safety_group=False)
    assert report.error is None and report.resumed == "Running", report.to_response()
    assert state(vm.name) == "running"
    assert_clean(engine, vm, also=clones_files)


@pytest.mark.parametrize("live", [False, True], ids=["paused", "live"])
def test_a_memory_group_of_a_paused_vm(vm: LabVm, engine: Engine, live: bool) -> None:
    """Taken of a VM the user paused: it stays paused (or the create is refused with
    nothing made); the revert resumes it running at that moment."""
    virsh = ("virsh", "-c", "qemu:///system")
    sh(*virsh, "suspend", vm.name)
    before = files(vm.directory)
    try:
        group = engine.create(vm=vm.name, name=f"of-paused-{live}", with_memory=True, live=live)
    except SnapgroupError as exc:
        print(f"\n{live}: refused {exc.code}: {exc.details}")
        assert files(vm.directory) == before
        assert state(vm.name) == "paused"
        sh(*virsh, "resume", vm.name)
        return
    finally:
        print(f"\nstate after the create: {state(vm.name)}")
    assert state(vm.name) == "paused"
    report = engine.revert(group.uuid, stop=True, stop_timeout=0, safety_group=False)
    assert report.error is None and report.resumed == "Running", report.to_response()
    assert state(vm.name) == "running"


def test_a_memory_group_reverts_after_an_older_groups_delete_moved_its_files(
    vm: LabVm, engine: Engine, tmp_path: Path, clones_files: set[str]
) -> None:
    """Deleting the group below a memory group merges its snapshots and moves the
    memory group's files to their parents' paths: its revert still resumes it on its
    own data."""
    for disk in range(3):
        write_live(vm.name, disk, 0xB0, 40 + disk)
    older = engine.create(vm=vm.name, name="older")
    for disk in range(3):
        write_live(vm.name, disk, 0xB1, 44 + disk)
    group = engine.create(vm=vm.name, name="mem-above", with_memory=True)
    for disk in range(3):
        write_live(vm.name, disk, 0xB2, 48 + disk)
    saved = views([group], tmp_path / "views")
    paths = {r.install_path for r in group.refs}
    assert engine.delete(older.uuid).error is None
    moved = engine.get(group.uuid)
    print(f"\nfiles moved: {len(paths - {r.install_path for r in moved.refs})} of {len(paths)}")
    assert_intact(engine, [moved], saved)
    report = engine.revert(group.uuid, stop=True, stop_timeout=0, safety_group=False)
    assert report.error is None and report.resumed == "Running", report.to_response()
    assert state(vm.name) == "running"
    live = domblklist(vm.name)
    for r in moved.refs:
        assert same(saved[r.volume_snapshot_uuid], live[vm.targets[r.device_id]])
    assert_clean(engine, vm, also=clones_files)


def test_a_raw_data_disk_refuses_a_memory_group(vm: LabVm, engine: Engine) -> None:
    """A writable raw disk cannot be snapshotted: skipped (skip_unsupported), a revert
    would resume the guest's memory over its later contents. libvirt takes such a
    memory snapshot (the disk snapshot='no'); snapgroup refuses it, nothing made.
    Last in the module: the firmware never lets the hot-plugged disk go again."""
    raw = vm.directory / "raw.img"
    sh("qemu-img", "create", "-q", "-f", "raw", str(raw), "8M")
    virsh = ("virsh", "-c", "qemu:///system")
    sh(*virsh, "attach-disk", vm.name, str(raw), "vdz", "--driver", "qemu", "--subdriver", "raw")
    try:
        before, groups = files(vm.directory), engine.list_groups(vm=vm.name)
        with pytest.raises(OperationError) as err:
            engine.create(vm=vm.name, name="raw", with_memory=True, skip_unsupported=True)
        print(f"\n{err.value.code}: {err.value.details}")
        assert "vdz: format raw" in err.value.details
        assert files(vm.directory) == before and engine.list_groups(vm=vm.name) == groups
        assert state(vm.name) == "running"
    finally:
        sh(*virsh, "detach-disk", vm.name, "vdz", check=False)
