"""kill -9 of the CLI at moments of a memory group's create, revert, delete and clone
--start (after delays from the operation's first journal row, and at fixed steps),
then `recover`, on the real stack (libvirt 9.0 + QEMU under TCG): a whole group or
none, the VM running, every other group byte for byte, qemu-img check clean, no stray
overlay or memory file. One firmware lab VM for the module, on a tmpfs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.testing.labvm import LabVm
from tests.lab.memory_tools import (
    DELAYS,
    TMPFS_MIB,
    assert_clean,
    assert_intact,
    cli,
    files,
    kill_after,
    module_engine,
    state,
    views,
)
from tests.lab.tools import (
    domblklist,
    export,
    same,
    sh,
    tmpfs_lab_vm,
    write_live,
)

# One xdist worker a module: one VM booted, not one a worker.
pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("memory-kills")]


@pytest.fixture(scope="module")
def vm() -> Iterator[LabVm]:
    with tmpfs_lab_vm("sg-memk", TMPFS_MIB) as lab:
        yield lab


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with module_engine("sg-lab-memk-") as eng:
        yield eng


@pytest.fixture(scope="module")
def clones_files() -> set[str]:
    """The files of the clones made so far (each undefined after its test)."""
    return set()


# At fixed steps too: inside the merges, after all three (before the memory file
# and the rows go).
DELETE_STEPS = ("delete:merge@2", "delete:merged@2", "delete:removed@3")


@pytest.mark.parametrize("delay", [*DELAYS, *DELETE_STEPS])
def test_kill_9_of_a_memory_groups_delete_then_recover(
    vm: LabVm,
    engine: Engine,
    tmp_path: Path,
    clones_files: set[str],
    delay: float | str,
) -> None:
    for disk in range(3):
        write_live(vm.name, disk, 0x90, 24 + disk)
    group = engine.create(vm=vm.name, name=f"kill-delete-{delay}", with_memory=True)
    assert group.memory is not None
    for disk in range(3):
        write_live(vm.name, disk, 0x91, 28 + disk)
    engine.create(vm=vm.name, name=f"after-{delay}")
    others = [g for g in engine.list_groups(vm=vm.name) if g.uuid != group.uuid]
    saved = views(others, tmp_path / "views")
    now = {t: export(p, tmp_path / f"now-{t}.qcow2") for t, p in domblklist(vm.name).items()}

    db = engine.db.url
    if isinstance(delay, str):  # it kills itself there
        proc = cli(db, "delete", group.uuid, die_at=delay)
        proc.wait()
        ops = [o for o in engine.operations(limit=5) if o.state == "running"]
        killed = ",".join(f"{o.kind}:{o.step}" for o in ops) or "-"
    else:
        proc = cli(db, "delete", group.uuid)
        killed = kill_after(engine, proc, "delete", delay)
    engine.recover()
    left = [g for g in engine.list_groups(vm=vm.name) if g.uuid == group.uuid]
    print(f"\ndelete killed at {delay}: {killed}; group left: {bool(left)}")
    assert state(vm.name) == "running"
    if left:  # killed before it changed anything: whole, usable, deleted now
        assert engine.check([group.uuid])[0].available
        assert engine.delete(group.uuid).error is None
    assert not os.path.exists(group.memory.file)
    assert all(same(now[t], p) for t, p in domblklist(vm.name).items())
    assert_intact(engine, others, saved)
    assert_clean(engine, vm, also=clones_files)


@pytest.mark.parametrize("delay", DELAYS)
def test_kill_9_of_a_memory_create_then_recover(
    vm: LabVm,
    engine: Engine,
    tmp_path: Path,
    clones_files: set[str],
    delay: float,
) -> None:
    groups = engine.list_groups(vm=vm.name)
    saved = views(groups, tmp_path / "views")
    name = f"kill-create-{delay}"
    proc = cli(
        engine.db.url, "create", "--vm", vm.name, "--name", name,
        "--with-memory",
    )  # fmt: skip
    killed = kill_after(engine, proc, "create", delay)
    engine.recover()
    made = [g for g in engine.list_groups(vm=vm.name) if g.name == name]
    print(f"\ncreate killed after {delay}s: {killed}; a group: {bool(made)}")
    assert state(vm.name) == "running"
    if made:  # recorded whole: its memory file there and what was saved
        assert made[0].memory is not None and engine.check([made[0].uuid])[0].available
    assert_intact(engine, groups, saved)
    assert_clean(engine, vm, also=clones_files)


@pytest.mark.parametrize("delay", DELAYS)
def test_kill_9_of_a_memory_revert_then_recover(
    vm: LabVm,
    engine: Engine,
    tmp_path: Path,
    clones_files: set[str],
    delay: float,
) -> None:
    for disk in range(3):
        write_live(vm.name, disk, 0xA0, 32 + disk)
    group = engine.create(vm=vm.name, name=f"kill-revert-{delay}", with_memory=True)
    for disk in range(3):
        write_live(vm.name, disk, 0xA1, 36 + disk)
    groups = engine.list_groups(vm=vm.name)
    saved = views(groups, tmp_path / "views")
    now = {t: export(p, tmp_path / f"now-{t}.qcow2") for t, p in domblklist(vm.name).items()}
    db = engine.db.url
    proc = cli(db, "revert", group.uuid, "--stop", "--stop-timeout", "0")
    killed = kill_after(engine, proc, "revert", delay)
    engine.recover()
    after = engine.list_groups(vm=vm.name)
    safety = [g for g in after if g.uuid not in {x.uuid for x in groups}]
    live = domblklist(vm.name)
    stopped = state(vm.name) != "running"
    print(f"\nrevert killed after {delay}s: {killed}; stopped: {stopped}")
    assert_intact(engine, groups, saved)
    assert len(safety) <= 1  # the present kept once, whole, when it was taken
    for g in safety:
        for r in g.refs:
            assert same(now[vm.targets[r.device_id]], r.install_path), r.install_path
    # Wherever it was killed, recover finished it (before the fix, killed before the
    # switch, it was rolled back with the VM left stopped): running from the group's
    # state, every disk the group's, the present kept in one safety group.
    assert not stopped and len(safety) == 1
    for r in group.refs:
        assert same(saved[r.volume_snapshot_uuid], live[vm.targets[r.device_id]])
    assert_clean(engine, vm, also=clones_files)


# At fixed steps too: the clone defined, its state's copy begun, copied, restoring.
CLONE_STEPS = (
    "clone:defined",
    "resume-state:begin",
    "resume-state:copied",
    "resume-state:restoring",
)


@pytest.mark.parametrize("delay", [*DELAYS, *CLONE_STEPS])
def test_kill_9_of_a_memory_groups_clone_start_then_recover(
    vm: LabVm,
    engine: Engine,
    tmp_path: Path,
    restored: list[str],
    clones_files: set[str],
    delay: float | str,
) -> None:
    group = engine.create(vm=vm.name, name=f"kill-clone-{delay}", with_memory=True)
    assert group.memory is not None
    groups = engine.list_groups(vm=vm.name)
    saved = views(groups, tmp_path / "views")
    tops = domblklist(vm.name)
    name = f"{vm.name}-c{uuid.uuid4().hex[:6]}"
    restored.append(name)
    argv = ("clone", group.uuid, "--name", name, "--start")
    db = engine.db.url
    if isinstance(delay, str):  # it kills itself there
        proc = cli(db, *argv, die_at=delay)
        proc.wait()
        ops = [o for o in engine.operations(limit=5) if o.state == "running"]
        killed = ",".join(f"{o.kind}:{o.step}" for o in ops) or "-"
    else:
        killed = kill_after(engine, cli(db, *argv), "clone", delay)
    engine.recover()
    defined = sh("virsh", "-c", "qemu:///system", "domstate", name, check=False)
    clone_state = defined.stdout.strip() if defined.returncode == 0 else "undefined"
    print(f"\nclone --start killed at {delay}: {killed}; the clone: {clone_state}")
    assert state(vm.name) == "running" and domblklist(vm.name) == tops
    assert clone_state in ("running", "shut off", "undefined")
    mems = {n for n in files(vm.directory) if n.endswith(".mem")}
    assert mems == {os.path.basename(g.memory.file) for g in groups if g.memory is not None}
    if clone_state != "undefined":
        clones_files.update(os.path.basename(p) for p in domblklist(name).values())
    assert_intact(engine, groups, saved)
    assert_clean(engine, vm, also=clones_files)
