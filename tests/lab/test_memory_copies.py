"""A memory group's state resumed as ANOTHER domain on the real stack (libvirt 9.0 +
QEMU, the lab guest under TCG): `clone --start` and `export` + `restore --as NEW
--start` run on from the group's moment (the writer's counters and the uptime continue
from the snapshot's values: no boot), the original running untouched, every disk the
group's. libvirt 9.0 refuses a save image whose XML names another domain: each copy's
header is written by snapgroup (adapters/save_image.py), checked here on libvirt's own
file first."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.adapters import save_image
from snapgroup.api import Engine, open_engine
from snapgroup.domain.inventory import Group
from snapgroup.testing.labvm import LabVm
from tests.lab.test_guest import DATA_SERIALS, Guest, booted_guest, guest_values
from tests.lab.test_memory_groups import RUN_ON_S, file_in_guest, guest_exec, state, uptime
from tests.lab.tools import backing_chain, domblklist, same, sh

# One xdist worker a module: one VM booted, not one a worker.
pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("memory-copies")]


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    with booted_guest(
        scratch_prefix="sg-lab-memcp-", scratch_dir="/var/tmp", name_prefix="sg-lab-memcp-"
    ) as g:
        yield g


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sg-lab-memcp-db-", dir="/var/tmp"))
    path.chmod(0o755)  # restored disks go below: QEMU (libvirt-qemu) must get through
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(scratch: Path) -> Iterator[Engine]:
    eng = open_engine(connect="qemu:///system", db=f"sqlite:///{scratch / 'snapgroup.db'}")
    yield eng
    eng.db.dispose()


@pytest.fixture(scope="module")
def taken(guest: Guest, engine: Engine) -> dict[str, object]:
    """A memory group of the running guest, which then ran on RUN_ON_S guest seconds
    (a file written in it after the snapshot): what the group holds, and what came later."""
    name = guest.name
    while min(guest_values(name)) < 3:  # the writer is at work
        time.sleep(0.2)
    before = {"values": guest_values(name), "uptime": uptime(name)}
    group = engine.create(vm=name, name="m1", with_memory=True)
    copies = {}
    for ref in group.refs:
        copy = guest.scratch / f"at-snapshot-{ref.volume_snapshot_uuid}.qcow2"
        shutil.copyfile(ref.install_path, copy)
        copies[ref.install_path] = copy
    guest_exec(name, "/bin/sh", "-c", f"echo later > /mnt/{DATA_SERIALS[0]}/after && sync")
    while uptime(name) < float(before["uptime"]) + RUN_ON_S:  # type: ignore[arg-type]
        time.sleep(0.5)
    late = {"values": guest_values(name), "uptime": uptime(name)}
    return {"group": group, "before": before, "late": late, "copies": copies}


def _resumed_at_the_snapshot(vm: str, taken: dict[str, object]) -> None:
    before, late = taken["before"], taken["late"]
    assert isinstance(before, dict) and isinstance(late, dict)
    assert state(vm) == "running"
    up = uptime(vm)
    # Its uptime goes on from the snapshot's: not the later value, not a boot.
    assert before["uptime"] <= up < late["uptime"], (before, up, late)
    values = guest_values(vm)
    assert all(
        b <= now < lt for b, now, lt in zip(before["values"], values, late["values"], strict=True)
    ), (before, values, late)
    assert not file_in_guest(vm, f"/mnt/{DATA_SERIALS[0]}/after")  # written later
    time.sleep(1.0)
    assert guest_values(vm) >= values  # and it runs on


def _original_untouched(guest: Guest, taken: dict[str, object]) -> None:
    late = taken["late"]
    assert isinstance(late, dict)
    assert state(guest.name) == "running" and uptime(guest.name) >= late["uptime"]
    assert file_in_guest(guest.name, f"/mnt/{DATA_SERIALS[0]}/after")
    copies = taken["copies"]
    assert isinstance(copies, dict)
    for snapshot_file, copy in copies.items():
        assert same(snapshot_file, copy)  # the group's files as they were


def _no_copy_left(directory: str, group: Group) -> None:
    mem = {os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".mem")}
    assert group.memory is not None and mem == {group.memory.file}


def test_libvirts_own_memory_file_is_read(taken: dict[str, object]) -> None:
    group = taken["group"]
    assert isinstance(group, Group) and group.memory is not None
    image = save_image.read_image(group.memory.file)
    assert image.version == 2 and image.format == 0 and image.cookie.startswith(b"<cookie>")
    assert "<uuid>" in image.xml and image.stream_offset < group.memory.size
    with open(group.memory.file, "rb") as f:
        f.seek(image.stream_offset)
        assert f.read(4) == b"QEVM"  # QEMU's migration stream starts there


def test_clone_start_resumes_a_copy(
    guest: Guest, engine: Engine, taken: dict[str, object], restored: list[str]
) -> None:
    group = taken["group"]
    assert isinstance(group, Group)
    started = time.monotonic()
    restored.append(f"{guest.name}-c")  # removed afterwards even when not resumed
    made = engine.clone(group.uuid, name=f"{guest.name}-c", start=True)
    clone_s = time.monotonic() - started
    assert made.resumed and made.state == "Running", made
    _resumed_at_the_snapshot(made.name, taken)
    # Its disks: its own overlays over the group's snapshot files.
    live = domblklist(made.name)
    for d in made.disks:
        ref = next(r for r in group.refs if r.volume_snapshot_uuid == d.snapshot_uuid)
        target = next(t for t, p in live.items() if p == d.install_path)
        assert backing_chain(live[target])[1] == ref.install_path
    _original_untouched(guest, taken)
    _no_copy_left(os.path.dirname(group.memory.file), group)  # type: ignore[union-attr]
    mac = sh("virsh", "-c", "qemu:///system", "domiflist", made.name).stdout
    print(f"\nclone --start of a memory group: {clone_s:.2f} s; interfaces: {mac.strip()!r}")


def test_export_then_restore_as_new_start_resumes(
    guest: Guest, engine: Engine, taken: dict[str, object], scratch: Path, restored: list[str]
) -> None:
    group = taken["group"]
    assert isinstance(group, Group) and group.memory is not None
    repo = str(scratch / "repo")
    manifest = engine.export(group.uuid, to=repo).manifest
    assert manifest.memory is not None and manifest.memory.size == group.memory.size
    assert manifest.memory.bytes_written < group.memory.size  # compressed
    assert engine.verify_backup(at=repo, backup_id=manifest.backup_id).clean
    # Restored without --start: its disks hold exactly the group's.
    disks = scratch / "disks"
    disks.mkdir()
    os.chmod(disks, 0o755)
    restored.append(f"{guest.name}-r0")
    cold = engine.restore(
        manifest.backup_id, source=repo, as_vm=f"{guest.name}-r0", disk_dir=str(disks)
    )
    by_volume = {r.volume_uuid: r.install_path for r in group.refs}
    for d in manifest.disks:
        assert same(cold.files[d.target], by_volume[d.volume_uuid]), d.target
    # With --start: it runs on from the group's moment.
    restored.append(f"{guest.name}-r1")  # removed afterwards even when not resumed
    started = time.monotonic()
    warm = engine.restore(
        manifest.backup_id, source=repo, as_vm=f"{guest.name}-r1", disk_dir=str(disks), start=True
    )
    restore_s = time.monotonic() - started
    assert warm.state == "Running"
    _resumed_at_the_snapshot(f"{guest.name}-r1", taken)
    _original_untouched(guest, taken)
    assert not [n for n in os.listdir(disks) if n.endswith(".mem")]  # the unpacked copy is gone
    print(f"\nrestore --as --start of a memory backup: {restore_s:.2f} s")


def test_instant_restore_of_a_memory_backup_resumes_then_copies(
    guest: Guest, engine: Engine, taken: dict[str, object], scratch: Path, restored: list[str]
) -> None:
    """restore --as --start --instant of a memory group's backup runs on from the
    group's moment, as --start does (it booted cold before); then its disks are pulled
    local under the running guest and stand alone."""
    group = taken["group"]
    assert isinstance(group, Group)
    repo = str(scratch / "repo-instant")
    manifest = engine.export(group.uuid, to=repo).manifest
    disks = scratch / "instant"
    disks.mkdir()
    os.chmod(disks, 0o755)
    name = f"{guest.name}-i"
    restored.append(name)  # removed afterwards even when not resumed
    started = time.monotonic()
    done, copying = engine.instant_restore(
        manifest.backup_id, source=repo, as_vm=name, disk_dir=str(disks)
    )
    instant_s = time.monotonic() - started
    assert done.resumed and done.state == "Running", done
    _resumed_at_the_snapshot(name, taken)
    engine.instant_follow(copying.operation)
    (op,) = [o for o in engine.operations() if o.uuid == copying.operation]
    assert op.state == "done", op.detail
    for path in done.files.values():
        assert backing_chain(path) == [path]  # standalone
    assert state(name) == "running" and uptime(name) >= float(taken["before"]["uptime"])  # type: ignore[index]
    _original_untouched(guest, taken)
    assert not [n for n in os.listdir(disks) if n.endswith(".mem")]  # the unpacked copy is gone
    print(f"\ninstant restore of a memory backup, resumed: {instant_s:.2f} s")


def test_instant_clone_of_a_memory_group_resumes_then_copies(
    guest: Guest, engine: Engine, taken: dict[str, object], restored: list[str]
) -> None:
    """clone --start --instant of a memory group: resumed at the group's moment, then
    its disks pulled off the group's snapshot files, which stay as they were."""
    group = taken["group"]
    assert isinstance(group, Group)
    name = f"{guest.name}-ic"
    restored.append(name)
    made, copying = engine.instant_clone(group.uuid, name=name)
    assert made.resumed and made.state == "Running", made
    _resumed_at_the_snapshot(name, taken)
    engine.instant_follow(copying.operation)
    (op,) = [o for o in engine.operations() if o.uuid == copying.operation]
    assert op.state == "done", op.detail
    for path in domblklist(name).values():
        assert backing_chain(path) == [path]  # standalone: it pins no snapshot
    assert state(name) == "running"
    _original_untouched(guest, taken)  # the group's files unchanged by the pulls


def _macs(vm: str, *, inactive: bool = False) -> list[str]:
    xml = sh("virsh", "-c", "qemu:///system", "dumpxml", vm, *(["--inactive"] if inactive else []))
    root = ET.fromstring(xml.stdout)
    return [m.get("address", "") for m in root.iterfind("devices/interface/mac")]


def test_a_resumed_clone_gets_a_mac_of_its_own(
    stopped_vm: LabVm, engine: Engine, restored: list[str], tmp_path: Path
) -> None:
    """A VM with a NIC (firmware idle, no guest needed): its memory group's clone
    resumes with the MAC libvirt gave the clone, in its live and its persistent XML
    (libvirt 9.0 took the rewritten save image), the original keeping its own."""
    nic = ET.Element("interface", type="user")
    ET.SubElement(nic, "model", type="virtio")
    (tmp_path / "nic.xml").write_text(ET.tostring(nic, encoding="unicode"))
    sh(
        "virsh",
        "-c",
        "qemu:///system",
        "attach-device",
        stopped_vm.name,
        str(tmp_path / "nic.xml"),
        "--config",
    )
    stopped_vm.start()
    (original,) = _macs(stopped_vm.name)
    group = engine.create(vm=stopped_vm.name, name="with-nic", with_memory=True)
    restored.append(f"{stopped_vm.name}-c")
    made = engine.clone(group.uuid, name=f"{stopped_vm.name}-c", start=True)
    assert made.resumed and state(made.name) == "running"
    (live,) = _macs(made.name)
    assert live != original and _macs(made.name, inactive=True) == [live]
    assert _macs(stopped_vm.name) == [original] and state(stopped_vm.name) == "running"
