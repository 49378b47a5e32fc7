"""Clone on real libvirtd + QEMU: a new VM boots on a group's point in time while the
original runs; writes to the clone never reach the original's files; deletes never
merge away what the clone reads."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.errors import OperationError
from snapgroup.ops.clone import Clone
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import backing_chain, domblklist, export, reads, same, sh, virsh, write_live

pytestmark = pytest.mark.lab
TARGETS = ["vda", "vdb", "vdc"]


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def macs(vm: str) -> list[str]:
    rows = virsh("domiflist", vm).splitlines()[2:]
    return [row.split()[-1] for row in rows if row.strip()]


@pytest.fixture
def clones() -> Iterator[list[str]]:
    """Names of clones a test made: destroyed and undefined afterwards (their files
    live in the original's directory, which the lab VM fixture removes)."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(Exception):
            sh("virsh", "-c", "qemu:///system", "destroy", name, check=False)
            sh("virsh", "-c", "qemu:///system", "undefine", name, "--nvram", check=False)


def test_clone_boots_beside_the_running_original(
    engine: Engine, stopped_vm: LabVm, clones: list[str], tmp_path: Path
) -> None:
    vm = stopped_vm
    nic = tmp_path / "nic.xml"
    nic.write_text("<interface type='user'><model type='virtio'/></interface>")
    virsh("attach-device", vm.name, str(nic), "--config")
    vm.start()
    for disk in range(3):
        write_live(vm.name, disk, 0x11, 0)
    group = engine.create(vm=vm.name, name="g0")
    for disk in range(3):
        write_live(vm.name, disk, 0x22, 0)
    tops = domblklist(vm.name)
    now = {t: export(tops[t], tmp_path / f"now-{t}.qcow2") for t in TARGETS}
    frozen = {r.install_path: sha256(r.install_path) for r in group.refs}

    name = f"{vm.name}-clone"
    clones.append(name)
    made: Clone = engine.clone(group.uuid, name=name, start=True)

    assert made.state == "Running" and made.uuid != vm.uuid
    assert "running" in virsh("domstate", vm.name) and "running" in virsh("domstate", name)
    assert macs(vm.name) != macs(name) and len(macs(name)) == 1
    clone_tops = domblklist(name)
    for disk, (target, ref) in enumerate(zip(TARGETS, group.refs, strict=True)):
        assert backing_chain(clone_tops[target])[1] == ref.install_path
        assert reads(clone_tops[target], 0x11, 0)  # the group's point in time
        write_live(name, disk, 0x33, 1)
        assert reads(clone_tops[target], 0x33, 1)
    # the original: same files, same data, still running
    assert domblklist(vm.name) == tops
    for target in TARGETS:
        assert same(now[target], tops[target])
        assert not reads(tops[target], 0x33, 1)
    assert {p: sha256(p) for p in frozen} == frozen

    # nothing merges the clone's snapshots away
    with pytest.raises(OperationError, match="a clone"):
        engine.delete(group.uuid)
    report = engine.delete(group.uuid, mode="Enforcing")
    assert not any(r.success for r in report.results)
    assert {p: sha256(p) for p in frozen} == frozen
    for target in TARGETS:
        assert reads(clone_tops[target], 0x33, 1) and reads(clone_tops[target], 0x11, 0)


def test_clone_of_a_stopped_vm_is_defined_stopped(
    engine: Engine, stopped_vm: LabVm, clones: list[str]
) -> None:
    vm = stopped_vm
    group = engine.create(vm=vm.name, name="g0")
    name = f"{vm.name}-c"
    clones.append(name)
    made = engine.clone(group.uuid, name=name)
    assert made.state == "Stopped"
    assert "shut off" in virsh("domstate", name)
    assert engine.volumes(name)[0].volume_uuid == made.disks[0].volume_uuid
    # the clone can take groups of its own and delete them
    own = engine.create(vm=name, name="c0")
    assert engine.delete(own.uuid).error is None
    assert domblklist(name, inactive=True)["vda"] == made.disks[0].install_path
    # undefined, the clone still pins the group while its disks exist...
    engine.hv.undefine(made.uuid)
    assert name not in virsh("list", "--all", "--name").split()
    assert engine.sync(made.uuid)[0].kind == "vm-gone"
    with pytest.raises(OperationError, match="a clone"):
        engine.delete(group.uuid)
    # ...and releases it once they are gone and sync has seen it, which forgets the
    # clone (no groups left): verify is clean, not "vm-missing" forever
    for disk in made.disks:
        Path(disk.install_path).unlink()
    assert [c.kind for c in engine.sync(made.uuid)] == ["volume-removed"] * 3 + ["vm-forgotten"]
    assert engine.verify() == []
    assert engine.delete(group.uuid).error is None
    assert engine.verify() == []
