"""LibvirtHypervisor against a real libvirtd + QEMU, on throwaway lab domains.

Data is written with qemu-io only into files no QEMU holds (before the VM starts), and
read back with `qemu-img ... -U` while it runs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import stat
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snapgroup.adapters.domxml import parse_domain
from snapgroup.adapters.libvirt_hv import LibvirtHypervisor
from snapgroup.adapters.runner import run
from snapgroup.domain.errors import (
    HypervisorError,
    HypervisorUnavailable,
    InvalidArgument,
    NotFound,
)
from snapgroup.domain.models import BlockJobProgress, DiskOverlay, VmState
from snapgroup.testing import labvm
from snapgroup.testing.labvm import LabVm, cleanup_stale, create_lab_vm, lab_directory

pytestmark = pytest.mark.lab

URI = "qemu:///system"
PREFIX = "sg-lab-hv-"
LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock"

MakeVm = Callable[..., LabVm]


# -- helpers ---------------------------------------------------------------------------


def sh(*argv: str | Path) -> str:
    return run([str(a) for a in argv], timeout=120)


def virsh(*argv: str) -> str:
    return sh("virsh", "-q", "-c", URI, *argv)


def blklist(vm: LabVm) -> dict[str, str]:
    rows = (line.split(None, 1) for line in virsh("domblklist", vm.name).splitlines())
    return {row[0]: row[1].strip() for row in rows if len(row) == 2}


def inactive_sources(vm: LabVm) -> dict[str, str | None]:
    info = parse_domain(virsh("dumpxml", "--inactive", vm.name), VmState.STOPPED)
    return {d.target: d.path for d in info.disks}


def overlay(backing: Path, name: str) -> Path:
    """What the engine does: an overlay made without opening the (in-use) backing file,
    owned by root, mode 0600."""
    path = backing.parent / name
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, "-u", path, "64M")
    path.chmod(0o600)
    return path


def write(path: Path, pattern: int, offset: str, length: str) -> None:
    sh("qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", path)


def same_view(a: Path, b: Path) -> bool:
    """qemu-img compare -U: 0 identical, 1 different, anything else an error."""
    done = subprocess.run(
        ["qemu-img", "compare", "-U", "-q", str(a), str(b)], capture_output=True, check=False
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


def snapshot_ref(top: Path, ref: Path) -> None:
    """The guest's view of `top` frozen into a raw file, read while QEMU holds it."""
    sh("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", top, ref)


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _no_leftovers() -> None:
    cleanup_stale(PREFIX, uri=URI)


@pytest.fixture
def hv() -> Iterator[LibvirtHypervisor]:
    hypervisor = LibvirtHypervisor(URI, poll_interval=0.05, job_timeout=120)
    yield hypervisor
    hypervisor.close()


@pytest.fixture
def make_vm(request: pytest.FixtureRequest) -> MakeVm:
    def make(prefix: str = PREFIX, **kwargs: Any) -> LabVm:
        name = f"{prefix}{uuid.uuid4().hex[:8]}"
        vm = create_lab_vm(lab_directory(name), name=name, uri=URI, **kwargs)
        request.addfinalizer(vm.destroy)
        return vm

    return make


# -- lookup ----------------------------------------------------------------------------


def test_lookup_by_name_uuid_and_dashed_uuid(hv: LibvirtHypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    dashed = str(uuid.UUID(vm.uuid))
    by_name = hv.lookup(vm.name)
    assert hv.lookup(vm.uuid) == by_name
    assert hv.lookup(dashed) == by_name
    assert hv.lookup(dashed.upper()) == by_name
    assert by_name.uuid == vm.uuid and len(vm.uuid) == 32
    assert by_name.name == vm.name
    assert by_name.state is VmState.RUNNING
    assert by_name.persistent is True
    assert [d.target for d in by_name.disks] == ["vda", "vdb", "vdc"]
    assert [d.path for d in by_name.disks] == [str(p) for p in vm.disks]
    assert {d.format for d in by_name.disks} == {"qcow2"}
    assert [d.boot_order for d in by_name.disks] == [1, None, None]
    assert [d.serial for d in by_name.disks] == ["sg-root", "sg-data1", "sg-data2"]
    assert all(d.backing == () for d in by_name.disks)


@pytest.mark.parametrize(
    "vm", ["sg-lab-hv-no-such-vm", "0" * 32, "5a0b7e0e-3c1d-4f7a-9d7e-1c2b3a4d5e6f"]
)
def test_lookup_unknown_is_not_found(hv: LibvirtHypervisor, vm: str) -> None:
    with pytest.raises(NotFound) as caught:
        hv.lookup(vm)
    assert caught.value.code == "SYS.1003"


def test_lookup_stopped_and_paused(hv: LibvirtHypervisor, make_vm: MakeVm) -> None:
    vm = make_vm(start=False)
    stopped = hv.lookup(vm.name)
    assert stopped.state is VmState.STOPPED
    assert [d.path for d in stopped.disks] == [str(p) for p in vm.disks]
    vm.start()
    virsh("suspend", vm.name)
    assert hv.lookup(vm.uuid).state is VmState.PAUSED


# -- snapshot_disks --------------------------------------------------------------------


def test_live_snapshot_of_three_disks(hv: LibvirtHypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    tops = [overlay(disk, f"{disk.stem}.s1.qcow2") for disk in vm.disks]
    overlays = [
        DiskOverlay(target, str(disk), str(top))
        for target, disk, top in zip(vm.targets, vm.disks, tops, strict=True)
    ]

    hv.snapshot_disks(vm.uuid, overlays)

    assert blklist(vm) == {t: str(top) for t, top in zip(vm.targets, tops, strict=True)}
    live = {d.target: d for d in hv.lookup(vm.uuid).disks}
    for target, disk, top in zip(vm.targets, vm.disks, tops, strict=True):
        assert live[target].path == str(top)
        assert live[target].backing == (str(disk),)
    # libvirt handed the root-owned 0600 overlays to QEMU's user, keeping the mode.
    qemu_uid = pwd.getpwnam("libvirt-qemu").pw_uid
    for top in tops:
        assert top.stat().st_uid == qemu_uid
        assert stat.S_IMODE(top.stat().st_mode) == 0o600
    # The persistent definition follows the live snapshot (with a <backingStore>).
    persistent = parse_domain(virsh("dumpxml", "--inactive", vm.name), VmState.STOPPED)
    assert [(d.path, d.backing) for d in persistent.disks] == [
        (str(top), (str(disk),)) for disk, top in zip(vm.disks, tops, strict=True)
    ]


def test_live_snapshot_of_a_paused_domain_and_one_disk(
    hv: LibvirtHypervisor, make_vm: MakeVm
) -> None:
    vm = make_vm()
    virsh("suspend", vm.name)
    top = overlay(vm.disks[1], "data1.s1.qcow2")
    hv.snapshot_disks(vm.uuid, [DiskOverlay("vdb", str(vm.disks[1]), str(top))])
    assert blklist(vm) == {"vda": str(vm.disks[0]), "vdb": str(top), "vdc": str(vm.disks[2])}
    assert hv.lookup(vm.uuid).state is VmState.PAUSED


@pytest.mark.parametrize("bad", ["missing", "not-qcow2"])
def test_failed_snapshot_changes_no_disk(hv: LibvirtHypervisor, make_vm: MakeVm, bad: str) -> None:
    vm = make_vm()
    good = [overlay(disk, f"{disk.stem}.s1.qcow2") for disk in vm.disks[:2]]
    broken = vm.directory / "broken.qcow2"
    if bad == "not-qcow2":
        # Passes libvirt's checks; QEMU rejects it inside the transaction, after the
        # other two overlays were opened.
        broken.write_bytes(os.urandom(65536))
    overlays = [
        DiskOverlay("vda", str(vm.disks[0]), str(good[0])),
        DiskOverlay("vdb", str(vm.disks[1]), str(good[1])),
        DiskOverlay("vdc", str(vm.disks[2]), str(broken)),
    ]
    before = blklist(vm)

    with pytest.raises(HypervisorError) as caught:
        hv.snapshot_disks(vm.uuid, overlays)

    assert caught.value.code == "HOST.1002"
    assert blklist(vm) == before == {t: str(d) for t, d in zip(vm.targets, vm.disks, strict=True)}
    assert all(d.backing == () for d in hv.lookup(vm.uuid).disks)
    assert inactive_sources(vm) == before


def test_snapshot_argument_checks(hv: LibvirtHypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    top = overlay(vm.disks[1], "data1.s1.qcow2")
    with pytest.raises(InvalidArgument):  # the engine's idea of the top is stale
        hv.snapshot_disks(vm.uuid, [DiskOverlay("vdb", "/elsewhere.qcow2", str(top))])
    with pytest.raises(NotFound):
        hv.snapshot_disks(vm.uuid, [DiskOverlay("vdq", str(vm.disks[1]), str(top))])
    with pytest.raises(NotFound):
        hv.snapshot_disks("0" * 32, [DiskOverlay("vdb", str(vm.disks[1]), str(top))])
    vm.stop()
    with pytest.raises(HypervisorError):
        hv.snapshot_disks(vm.uuid, [DiskOverlay("vdb", str(vm.disks[1]), str(top))])


# -- set_disk_sources ------------------------------------------------------------------


def _add_vnc_password(vm: LabVm, password: str) -> None:
    root = ET.fromstring(virsh("dumpxml", "--inactive", "--security-info", vm.name))
    devices = root.find("devices")
    assert devices is not None
    ET.SubElement(devices, "graphics", type="vnc", autoport="yes", listen="127.0.0.1",
                  passwd=password)  # fmt: skip
    path = vm.directory / "with-vnc.xml"
    path.write_text(ET.tostring(root, encoding="unicode"))
    virsh("define", str(path))


def test_set_disk_sources_offline(hv: LibvirtHypervisor, make_vm: MakeVm) -> None:
    vm = make_vm(start=False)
    _add_vnc_password(vm, "pw-123")
    tops = {
        "vdb": overlay(vm.disks[1], "data1.s1.qcow2"),
        "vdc": overlay(vm.disks[2], "data2.s1.qcow2"),
    }

    hv.set_disk_sources(vm.uuid, {t: str(p) for t, p in tops.items()})

    assert inactive_sources(vm) == {
        "vda": str(vm.disks[0]),
        "vdb": str(tops["vdb"]),
        "vdc": str(tops["vdc"]),
    }
    assert "passwd='pw-123'" in virsh("dumpxml", "--inactive", "--security-info", vm.name)
    # libvirt reads the new chain from the overlay's header at start.
    vm.start()
    live = {d.target: d for d in hv.lookup(vm.uuid).disks}
    assert live["vdb"].path == str(tops["vdb"])
    assert live["vdb"].backing == (str(vm.disks[1]),)


def test_set_disk_sources_drops_a_stale_stored_chain(
    hv: LibvirtHypervisor, make_vm: MakeVm
) -> None:
    vm = make_vm()
    top = overlay(vm.disks[1], "data1.s1.qcow2")
    hv.snapshot_disks(vm.uuid, [DiskOverlay("vdb", str(vm.disks[1]), str(top))])
    vm.stop()
    assert "<backingStore" in virsh("dumpxml", "--inactive", vm.name)
    # E.g. after an offline commit: same top, different chain below it.
    hv.set_disk_sources(vm.uuid, {"vdb": str(top)})
    assert "<backingStore" not in virsh("dumpxml", "--inactive", vm.name)


def test_set_disk_sources_refusals(hv: LibvirtHypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    top = overlay(vm.disks[1], "data1.s1.qcow2")
    with pytest.raises(HypervisorError):  # running: QEMU still writes the old files
        hv.set_disk_sources(vm.uuid, {"vdb": str(top)})
    vm.stop()
    with pytest.raises(NotFound):
        hv.set_disk_sources(vm.uuid, {"vdq": str(top)})
    assert inactive_sources(vm)["vdb"] == str(vm.disks[1])


# -- block_commit ----------------------------------------------------------------------


def test_active_commit_pivots_back_to_the_base(hv: LibvirtHypervisor, make_vm: MakeVm) -> None:
    vm = make_vm(start=False)
    base = vm.disks[1]
    write(base, 0x11, "0", "1M")
    top = overlay(base, "data1.s1.qcow2")
    write(top, 0xAB, "512K", "2M")
    hv.set_disk_sources(vm.uuid, {"vdb": str(top)})
    vm.start()
    ref = vm.directory / "ref.raw"
    snapshot_ref(top, ref)
    seen: list[BlockJobProgress] = []

    hv.block_commit(vm.uuid, "vdb", top=None, base=str(base), progress=seen.append)

    assert blklist(vm)["vdb"] == str(base)
    vdb = {d.target: d for d in hv.lookup(vm.uuid).disks}["vdb"]
    assert (vdb.path, vdb.backing) == (str(base), ())
    assert inactive_sources(vm)["vdb"] == str(base)  # the persistent definition too
    assert same_view(base, ref)
    assert seen and seen[-1].cur == seen[-1].end > 0
    # The base is QEMU's active image again: it takes a new snapshot and commit.
    again = overlay(base, "data1.s2.qcow2")
    hv.snapshot_disks(vm.uuid, [DiskOverlay("vdb", str(base), str(again))])
    hv.block_commit(vm.uuid, "vdb", top=str(again), base=str(base))  # top named: same
    assert blklist(vm)["vdb"] == str(base)
    sh("qemu-img", "check", "-U", "-q", base)


def test_intermediate_commit_keeps_the_top_view(hv: LibvirtHypervisor, make_vm: MakeVm) -> None:
    vm = make_vm(start=False)
    base = vm.disks[2]
    write(base, 0x22, "0", "1M")
    mid = overlay(base, "data2.s1.qcow2")
    write(mid, 0x33, "1M", "1M")
    top = overlay(mid, "data2.s2.qcow2")
    write(top, 0x44, "1536K", "1M")
    hv.set_disk_sources(vm.uuid, {"vdc": str(top)})
    vm.start()
    vdc = {d.target: d for d in hv.lookup(vm.uuid).disks}["vdc"]
    assert vdc.backing == (str(mid), str(base))
    ref = vm.directory / "ref.raw"
    snapshot_ref(top, ref)
    seen: list[BlockJobProgress] = []

    hv.block_commit(vm.uuid, "vdc", top=str(mid), base=str(base), progress=seen.append)

    vdc = {d.target: d for d in hv.lookup(vm.uuid).disks}["vdc"]
    assert (vdc.path, vdc.backing) == (str(top), (str(base),))
    assert same_view(top, ref)
    # QEMU rewrote the top's backing link, as an absolute path.
    info = sh("qemu-img", "info", "-U", "--output=json", top)
    assert f'"backing-filename": "{base}"' in info
    assert inactive_sources(vm)["vdc"] == str(top)


def test_settle_pivots_an_active_commit_left_running(
    hv: LibvirtHypervisor, make_vm: MakeVm
) -> None:
    """A caller died after starting an active commit: settle_block_job pivots it."""
    vm = make_vm()
    base = vm.disks[1]
    top = overlay(base, "data1.s1.qcow2")
    hv.snapshot_disks(vm.uuid, [DiskOverlay("vdb", str(base), str(top))])
    virsh("blockcommit", vm.name, "vdb", "--active", "--base", str(base))  # no pivot
    with pytest.raises(HypervisorError):  # the disk is busy
        hv.block_commit(vm.uuid, "vdb", top=None, base=str(base))

    hv.settle_block_job(vm.uuid, "vdb")

    assert blklist(vm)["vdb"] == str(base)
    assert "vdb" not in virsh("blockjob", vm.name, "vdb", "--info")


def test_settle_waits_for_a_commit_left_running(hv: LibvirtHypervisor, make_vm: MakeVm) -> None:
    vm = make_vm(start=False)
    base = vm.disks[2]
    mid = overlay(base, "data2.s1.qcow2")
    write(mid, 0x33, "0", "32M")
    top = overlay(mid, "data2.s2.qcow2")
    hv.set_disk_sources(vm.uuid, {"vdc": str(top)})
    vm.start()
    # 8 MiB/s: the 32 MiB commit is still running when settle starts.
    virsh("blockcommit", vm.name, "vdc", "--top", str(mid), "--base", str(base),
          "--bandwidth", "8")  # fmt: skip

    hv.settle_block_job(vm.uuid, "vdc")

    assert "vdc" not in virsh("blockjob", vm.name, "vdc", "--info")
    vdc = {d.target: d for d in hv.lookup(vm.uuid).disks}["vdc"]
    assert vdc.backing == (str(base),)


def test_settle_without_a_job_or_a_qemu(hv: LibvirtHypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    hv.settle_block_job(vm.uuid, "vdb")
    with pytest.raises(NotFound):
        hv.settle_block_job(vm.uuid, "vdq")
    vm.stop()
    hv.settle_block_job(vm.uuid, "vdb")


def test_block_commit_argument_checks(hv: LibvirtHypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    top = overlay(vm.disks[1], "data1.s1.qcow2")
    hv.snapshot_disks(vm.uuid, [DiskOverlay("vdb", str(vm.disks[1]), str(top))])
    with pytest.raises(InvalidArgument):  # not in the chain
        hv.block_commit(vm.uuid, "vdb", top=None, base=str(vm.disks[2]))
    with pytest.raises(InvalidArgument):  # base above top
        hv.block_commit(vm.uuid, "vdb", top=str(vm.disks[1]), base=str(top))
    with pytest.raises(NotFound):
        hv.block_commit(vm.uuid, "vdq", top=None, base=str(vm.disks[1]))
    vm.stop()
    with pytest.raises(HypervisorError):
        hv.block_commit(vm.uuid, "vdb", top=None, base=str(vm.disks[1]))


# -- connection and guest agent --------------------------------------------------------


def test_unreachable_libvirtd(tmp_path: Path) -> None:
    hv = LibvirtHypervisor(f"qemu+unix:///system?socket={tmp_path}/no-such.sock")
    with pytest.raises(HypervisorUnavailable) as caught:
        hv.lookup("anything")
    assert caught.value.code == "HOST.1001"


class _Proxy:
    """A unix-socket relay to libvirtd, so a test can cut the connection under a client."""

    def __init__(self, path: Path) -> None:
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(path))
        self._server.listen(4)
        self._sockets: list[socket.socket] = [self._server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(LIBVIRT_SOCKET)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def test_lost_connection_is_unavailable_then_reconnects(
    hv: LibvirtHypervisor, make_vm: MakeVm, tmp_path: Path
) -> None:
    vm = make_vm(start=False)
    sock = tmp_path / "relay.sock"
    relayed = LibvirtHypervisor(f"qemu+unix:///system?socket={sock}")
    proxy = _Proxy(sock)
    try:
        assert relayed.lookup(vm.name).uuid == vm.uuid
        proxy.cut()
        with pytest.raises(HypervisorUnavailable):
            relayed.lookup(vm.name)
        sock.unlink()
        proxy = _Proxy(sock)
        assert relayed.lookup(vm.name).uuid == vm.uuid  # a fresh connection
    finally:
        relayed.close()
        proxy.cut()


def test_freeze_without_a_guest_agent(hv: LibvirtHypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    with pytest.raises(HypervisorError):
        hv.freeze(vm.uuid, timeout=5)


@pytest.mark.parametrize("guest_agent", [False, True])
def test_agent_requests_fail_fast_without_an_answering_agent(
    hv: LibvirtHypervisor, make_vm: MakeVm, guest_agent: bool
) -> None:
    """No channel ("not configured") or a channel nobody listens on ("not connected"):
    the probe, freeze and thaw fail at once, well inside their timeout, so `auto` falls
    back without a wait (the lab guest's own agent is tested in test_freeze_recovery)."""
    vm = make_vm(guest_agent=guest_agent)
    for call in (hv.guest_filesystems, hv.freeze, hv.thaw):
        started = time.monotonic()
        with pytest.raises(HypervisorError):
            call(vm.uuid, timeout=10)
        assert time.monotonic() - started < 5, call


# -- the lab helper itself ---------------------------------------------------------------


def test_labvm_destroy_is_idempotent_and_removes_everything(make_vm: MakeVm) -> None:
    vm = make_vm(guest_agent=True)
    assert vm.directory.is_dir()
    vm.destroy()
    vm.destroy()
    assert not vm.directory.exists()
    assert vm.name not in virsh("list", "--all", "--name").split()


def test_cleanup_stale_spares_live_owners_only(
    make_vm: MakeVm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A prefix of this test's own: another worker's module-start cleanup of PREFIX
    # would otherwise remove the orphan first.
    prefix = f"sg-lab-stale-{uuid.uuid4().hex[:6]}-"
    mine = make_vm(prefix, start=False)
    gone = 2**22 + 7  # above the kernel's highest possible pid_max: no such process
    with monkeypatch.context() as patch:
        patch.setattr(labvm.os, "getpid", lambda: gone)
        orphan = make_vm(prefix)

    removed = cleanup_stale(prefix, uri=URI)

    assert orphan.name in removed
    assert mine.name not in removed
    assert not orphan.directory.exists()
    assert mine.directory.exists()
    names = virsh("list", "--all", "--name").split()
    assert orphan.name not in names and mine.name in names
