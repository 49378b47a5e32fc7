"""The lab guest (lab/build_guest.py + lab/guest/init) boots under libvirt/QEMU TCG to a
working qemu-guest-agent, mounts its disks by serial, freezes/thaws, runs the sequence writer
and shuts down through the agent.

The domain comes from snapgroup.testing.labvm.create_lab_vm (direct kernel boot, agent channel)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from snapgroup.testing.labvm import LabVm, create_lab_vm

pytestmark = pytest.mark.lab

URI = "qemu:///system"
REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "lab" / "build_guest.py"
GUEST_OUT = REPO / "build" / "guest"
# create_lab_vm's disks root.qcow2, data1.qcow2, ... carry the serials sg-root, sg-data1, ...
ROOT_SERIAL = "sg-root"
DATA_SERIALS = ["sg-data1", "sg-data2"]  # the writer's order: sorted by serial
SERIALS = [ROOT_SERIAL, *DATA_SERIALS]
DISK_MIB = 64
# acpi=noirq pci=nomsi: route PCI INTx through the BIOS tables and the 8259 PIC instead of
# ACPI link devices, whose AML the TCG guest runs slowly (virtio_pci's probe: ~1.3 s -> ~0.2 s).
# pci=nomsi goes with it: without an IO-APIC each virtio device's MSI-X attempt WARNs.
CMDLINE = "console=ttyS0 quiet panic=-1 acpi=noirq pci=nomsi"
BOOT_TIMEOUT_S = 90.0
SHUTDOWN_TIMEOUT_S = 20.0


def _run(argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


def _check(argv: list[str], timeout: float = 60.0) -> str:
    proc = _run(argv, timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def virsh(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return _run(["virsh", "-c", URI, *args], timeout)


def virsh_ok(*args: str, timeout: float = 60.0) -> str:
    return _check(["virsh", "-c", URI, *args], timeout)


def agent(name: str, command: str, arguments: dict[str, object] | None = None) -> object:
    request: dict[str, object] = {"execute": command}
    if arguments is not None:
        request["arguments"] = arguments
    out = virsh_ok("qemu-agent-command", name, json.dumps(request), "--timeout", "10")
    return json.loads(out)["return"]


@dataclass
class Guest:
    vm: LabVm
    scratch: Path  # world-searchable, for host-side reads
    boot_to_agent_s: float = 0.0

    @property
    def name(self) -> str:
        return self.vm.name

    def disk(self, serial: str) -> Path:
        return self.vm.disks[SERIALS.index(serial)]

    def target(self, serial: str) -> str:
        return self.vm.targets[SERIALS.index(serial)]

    def console_tail(self, lines: int = 40) -> str:
        if self.vm.console_log is None:
            return "(no console log)"
        try:
            text = self.vm.console_log.read_text(errors="replace")
        except OSError as exc:
            return f"(no console log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def _ensure_guest_built() -> tuple[Path, Path]:
    proc = _run([sys.executable, str(BUILD_SCRIPT), "--out", str(GUEST_OUT)], timeout=900)
    assert proc.returncode == 0, f"guest build failed:\n{proc.stderr}"
    return GUEST_OUT / "vmlinuz", GUEST_OUT / "initrd.gz"


def _wait_for_agent(guest: Guest, started: float) -> float:
    while True:
        proc = virsh("qemu-agent-command", guest.name, '{"execute":"guest-ping"}', "--timeout", "1")
        if proc.returncode == 0:
            return time.monotonic() - started
        state = virsh("domstate", guest.name).stdout.strip()
        if state != "running":
            raise AssertionError(
                f"guest is {state!r} before the agent answered:\n{guest.console_tail()}"
            )
        if time.monotonic() - started > BOOT_TIMEOUT_S:
            raise AssertionError(
                f"no guest-ping answer within {BOOT_TIMEOUT_S} s ({proc.stderr.strip()}):\n"
                f"{guest.console_tail()}"
            )
        time.sleep(0.1)


@contextlib.contextmanager
def booted_guest(*, scratch_prefix: str, scratch_dir: str, name_prefix: str) -> Iterator[Guest]:
    """The lab guest (its writer on) started and answering its agent; destroyed and its
    scratch directory (tempfile's, SCRATCH_PREFIX in SCRATCH_DIR) removed afterwards."""
    kernel_src, initrd_src = _ensure_guest_built()
    # qemu runs as libvirt-qemu: every directory on the way to the kernel, initrd and disks
    # must be searchable by it (pytest's tmp_path lives under a 0700 directory).
    base = Path(tempfile.mkdtemp(prefix=scratch_prefix, dir=scratch_dir))
    vm: LabVm | None = None
    try:
        base.chmod(0o755)
        kernel = base / "vmlinuz"
        initrd = base / "initrd.gz"
        shutil.copyfile(kernel_src, kernel)
        shutil.copyfile(initrd_src, initrd)
        vm = create_lab_vm(
            base / "vm",
            name=f"{name_prefix}{uuid.uuid4().hex[:8]}",
            data_disks=len(DATA_SERIALS),
            disk_mib=DISK_MIB,
            kernel=kernel,
            initrd=initrd,
            cmdline=f"{CMDLINE} sg.root={ROOT_SERIAL} sg.writer=1",
            guest_agent=True,
            start=False,
        )
        g = Guest(vm, base)
        started = time.monotonic()
        vm.start()
        g.boot_to_agent_s = _wait_for_agent(g, started)
        yield g
    finally:
        if vm is not None:
            vm.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def guest() -> Iterator[Guest]:
    with booted_guest(
        scratch_prefix="sg-lab-", scratch_dir="/tmp", name_prefix="sg-lab-guest-"
    ) as g:
        print(f"\n{g.name}: virsh start -> first guest-ping answer: {g.boot_to_agent_s:.2f} s")
        yield g


def _read_guest_file(name: str, path: str) -> bytes:
    handle = agent(name, "guest-file-open", {"path": path, "mode": "r"})
    data = b""
    try:
        while True:
            chunk = agent(name, "guest-file-read", {"handle": handle, "count": 1 << 20})
            assert isinstance(chunk, dict)
            data += base64.b64decode(chunk["buf-b64"])
            if chunk["eof"] or chunk["count"] == 0:
                return data
    finally:
        agent(name, "guest-file-close", {"handle": handle})


def last_value(seq: bytes) -> int:
    """The last number of a writer's /seq file (see lab/guest/init); 0 when empty."""
    lines = [line for line in seq.replace(b"\0", b"").split(b"\n") if line.strip()]
    return int(lines[-1]) if lines else 0


def assert_consistent(values: list[int]) -> None:
    """Writer invariant for data disks in serial order: v1 >= v2 >= ... >= vk >= v1 - 1."""
    assert all(a >= b for a, b in itertools.pairwise(values)), values
    assert values[-1] >= values[0] - 1, values


def guest_values(name: str) -> list[int]:
    return [last_value(_read_guest_file(name, f"/mnt/{s}/seq")) for s in DATA_SERIALS]


@contextlib.contextmanager
def host_raw(qcow2: Path, scratch: Path) -> Iterator[Path]:
    """A raw copy of a (stopped) VM's disk, for debugfs."""
    raw = scratch / (qcow2.stem + ".raw")
    _check(["qemu-img", "convert", "-U", "-O", "raw", str(qcow2), str(raw)])
    try:
        yield raw
    finally:
        raw.unlink()


def debugfs(raw: Path, request: str) -> subprocess.CompletedProcess[str]:
    return _run(["debugfs", "-R", request, str(raw)])


def test_lab_guest(guest: Guest) -> None:
    name = guest.name

    # Every disk with a serial is mounted at /mnt/SERIAL; libvirt maps them to our targets.
    fsinfo = virsh_ok("domfsinfo", name)
    mounts: dict[str, tuple[str, str]] = {}
    for line in fsinfo.splitlines()[2:]:
        fields = line.split()
        if len(fields) >= 4:
            mounts[fields[0]] = (fields[2], fields[3])
    print(fsinfo)
    for serial in SERIALS:  # the root disk is mounted too (lab/guest/init)
        assert mounts.get(f"/mnt/{serial}") == ("ext4", guest.target(serial)), fsinfo

    # The writer runs: every data disk's last value grows, in the documented order.
    # (Live reads are one disk after the other, so only growth is checked here.)
    before = guest_values(name)
    time.sleep(1.0)
    after = guest_values(name)
    assert all(b > a for a, b in zip(before, after, strict=True)), (before, after)
    print(f"writer: {before} -> {after} in ~1 s")

    # Freeze / thaw through libvirt.
    t0 = time.monotonic()
    out = virsh_ok("domfsfreeze", name)
    took = time.monotonic() - t0
    assert re.search(rf"Froze {len(SERIALS)} filesystem", out), out
    assert agent(name, "guest-fsfreeze-status") == "frozen"
    out = virsh_ok("domfsthaw", name)
    assert re.search(rf"Thawed {len(SERIALS)} filesystem", out), out
    assert agent(name, "guest-fsfreeze-status") == "thawed"
    print(f"domfsfreeze took {took:.2f} s")
    thawed = guest_values(name)

    # `virsh shutdown` goes through the agent's /sbin/shutdown and ends in "shut off".
    t0 = time.monotonic()
    virsh_ok("shutdown", name)
    while (state := virsh("domstate", name).stdout.strip()) != "shut off":
        assert time.monotonic() - t0 < SHUTDOWN_TIMEOUT_S, (
            f"still {state!r} {SHUTDOWN_TIMEOUT_S} s after virsh shutdown:\n{guest.console_tail()}"
        )
        time.sleep(0.2)
    print(f"virsh shutdown -> shut off: {time.monotonic() - t0:.2f} s")

    # Host side: the data disks' /seq files hold the writer's numbers, cleanly unmounted.
    final = []
    for serial in DATA_SERIALS:
        with host_raw(guest.disk(serial), guest.scratch) as raw:
            cat = debugfs(raw, "cat /seq")
            assert cat.returncode == 0, cat.stderr
            final.append(last_value(cat.stdout.encode()))
            features = debugfs(raw, "features").stdout
        assert "extent" in features, features  # ext4, as formatted in the guest
        assert "needs_recovery" not in features, features
    assert_consistent(final)
    assert all(f >= t for f, t in zip(final, thawed, strict=True)), (thawed, final)
    print(f"host read after shutdown: {dict(zip(DATA_SERIALS, final, strict=True))}")
    # The writer never touches the root disk.
    with host_raw(guest.disk(ROOT_SERIAL), guest.scratch) as raw:
        root = debugfs(raw, "stat /seq")
    assert "File not found" in root.stdout + root.stderr, root.stdout + root.stderr
