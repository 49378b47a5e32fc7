"""Throwaway libvirt domains for lab tests and `make demo`.

A lab VM is a persistent TCG domain (type='qemu': the host's nested /dev/kvm cannot
boot Linux) with qcow2 disks root.qcow2, data1.qcow2... in one directory. Without a
kernel it idles in firmware, which is all disk snapshots and block jobs need.

libvirt is only ever imported by the hypervisor adapter, so this helper drives `virsh`.
Each domain records its owner's pid and directory in its <metadata>, so cleanup_stale()
can remove what an interrupted run left without touching a concurrent run's domains.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import string
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from snapgroup.adapters.domxml import normalize_uuid
from snapgroup.adapters.runner import run
from snapgroup.domain.errors import SnapgroupError

DEFAULT_URI = "qemu:///system"
# Where lab VMs should live. Not under pytest's tmp_path: every pytest session start
# chmods /tmp/pytest-of-<user> back to 0700, so a concurrent session would cut QEMU
# (libvirt-qemu) off from disks there in the middle of a test.
LAB_ROOT = Path("/var/tmp/snapgroup-lab")
MARKER = ".sg-lab.json"  # in the VM's directory: which files the helper made
_NS = "https://snapgroup.invalid/xmlns/lab/1"
ET.register_namespace("sglab", _NS)
_VIRSH_TIMEOUT = 60.0


class LabVmError(SnapgroupError):
    code = "SYS.1001"
    description = "lab VM helper failed"


def lab_directory(name: str) -> Path:
    """A fresh directory for the lab VM `name` under LAB_ROOT (created by create_lab_vm,
    so destroy() removes it whole)."""
    return LAB_ROOT / name


def _virsh(uri: str, *args: str) -> str:
    return run(["virsh", "-q", "-c", uri, *args], timeout=_VIRSH_TIMEOUT, error=LabVmError)


def _target(index: int) -> str:
    """vda..vdz, vdaa, vdab...: libvirt's (and Linux's) disk naming."""
    letters = string.ascii_lowercase
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = letters[rest] + name
    return "vd" + name


def _make_searchable(directory: Path) -> None:
    """o+x on the directory and every parent: QEMU runs as libvirt-qemu and must walk
    the path (a 0700 mktemp or pytest tmp directory would hide the disks from it)."""
    for part in (directory, *directory.parents):
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH:
            part.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@dataclass
class LabVm:
    name: str
    uuid: str  # 32 lowercase hex
    directory: Path
    disks: tuple[Path, ...]  # root first, then data1, data2...
    uri: str = DEFAULT_URI
    console_log: Path | None = None
    owns_directory: bool = False
    files: tuple[Path, ...] = field(default_factory=tuple)  # everything the helper made
    destroyed: bool = False

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(_target(i) for i in range(len(self.disks)))

    def start(self) -> None:
        _virsh(self.uri, "start", self.name)

    def stop(self) -> None:
        """Hard power-off (the idle firmware ignores ACPI shutdown)."""
        with contextlib.suppress(LabVmError):  # already stopped
            _virsh(self.uri, "destroy", self.name)

    def destroy(self) -> None:
        """Power off, undefine and delete the files. Safe to call again."""
        if self.destroyed:
            return
        _remove_domain(self.uri, self.name)
        _remove_files(self.directory, self.name)
        self.destroyed = True


def _remove_domain(uri: str, name: str) -> None:
    """destroy + undefine with every metadata flag; a missing domain is fine."""
    with contextlib.suppress(LabVmError):  # not running
        _virsh(uri, "destroy", name)
    try:
        _virsh(
            uri,
            "undefine",
            name,
            "--snapshots-metadata",
            "--checkpoints-metadata",
            "--managed-save",
            "--nvram",
        )
    except LabVmError as exc:
        if "failed to get domain" not in str(exc) and "not found" not in str(exc):
            raise


def _remove_files(directory: Path, name: str) -> None:
    """Delete what the helper made for `name`: the whole directory when it created it,
    else only the files it listed in the marker. A marker for another VM is left alone."""
    marker = directory / MARKER
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return
    if record.get("name") != name:
        return
    if record.get("owns_directory"):
        shutil.rmtree(directory, ignore_errors=True)
        return
    for path in (*record.get("files", ()), str(marker)):
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()


def _domain_xml(
    *,
    name: str,
    disks: Sequence[Path],
    memory_mib: int,
    console_log: Path,
    directory: Path,
    kernel: Path | None,
    initrd: Path | None,
    cmdline: str | None,
    guest_agent: bool,
) -> str:
    domain = ET.Element("domain", type="qemu")
    ET.SubElement(domain, "name").text = name
    metadata = ET.SubElement(domain, "metadata")
    ET.SubElement(
        metadata,
        f"{{{_NS}}}lab",
        owner_pid=str(os.getpid()),
        directory=str(directory),
    )
    ET.SubElement(domain, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(domain, "vcpu").text = "1"

    os_el = ET.SubElement(domain, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    if kernel is not None:
        ET.SubElement(os_el, "kernel").text = str(kernel)
        if initrd is not None:
            ET.SubElement(os_el, "initrd").text = str(initrd)
        if cmdline is not None:
            ET.SubElement(os_el, "cmdline").text = cmdline
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(domain, "clock", offset="utc")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"

    devices = ET.SubElement(domain, "devices")
    for index, path in enumerate(disks):
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", file=str(path))
        ET.SubElement(disk, "target", dev=_target(index), bus="virtio")
        ET.SubElement(disk, "serial").text = f"sg-{path.stem}"
        if index == 0:
            ET.SubElement(disk, "boot", order="1")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(console_log))
    ET.SubElement(serial, "target", port="0")
    if guest_agent:
        channel = ET.SubElement(devices, "channel", type="unix")
        ET.SubElement(channel, "source", mode="bind")  # libvirt picks the socket path
        ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    # Nothing the tests do not need: no USB, balloon, network or display.
    ET.SubElement(devices, "controller", type="usb", model="none")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")


def create_lab_vm(
    directory: Path,
    *,
    name: str,
    data_disks: int = 2,
    disk_mib: int = 64,
    start: bool = True,
    uri: str = DEFAULT_URI,
    kernel: Path | None = None,
    initrd: Path | None = None,
    cmdline: str | None = None,
    memory_mib: int = 256,
    guest_agent: bool = False,
) -> LabVm:
    """Create disks, define the persistent domain and (by default) start it.

    On any failure everything made so far is removed again.
    """
    directory = directory.absolute()
    owns_directory = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    _make_searchable(directory)
    if (directory / MARKER).exists():
        raise LabVmError(f"{directory} already holds a lab VM")

    disks = tuple(
        directory / f"{stem}.qcow2"
        for stem in ("root", *(f"data{i}" for i in range(1, data_disks + 1)))
    )
    console_log = directory / "console.log"
    xml_file = directory / "domain.xml"
    files = (*disks, console_log, xml_file)
    # The marker goes first so that a failure from here on can be cleaned up.
    (directory / MARKER).write_text(
        json.dumps(
            {"name": name, "owns_directory": owns_directory, "files": [str(f) for f in files]}
        )
    )
    vm = LabVm(
        name=name,
        uuid="",
        directory=directory,
        disks=disks,
        uri=uri,
        console_log=console_log,
        owns_directory=owns_directory,
        files=files,
    )
    try:
        for disk in disks:
            if disk.exists():
                raise LabVmError(f"{disk} exists; refusing to overwrite it")
            run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{disk_mib}M"],
                error=LabVmError,
            )
        xml_file.write_text(
            _domain_xml(
                name=name,
                disks=disks,
                memory_mib=memory_mib,
                console_log=console_log,
                directory=directory,
                kernel=kernel,
                initrd=initrd,
                cmdline=cmdline,
                guest_agent=guest_agent,
            )
        )
        _virsh(uri, "define", str(xml_file))
        vm.uuid = normalize_uuid(_virsh(uri, "domuuid", name).strip())
        if start:
            vm.start()
    except BaseException:
        _remove_domain(uri, name)
        _remove_files(directory, name)
        raise
    return vm


def _owner(uri: str, name: str) -> tuple[int | None, Path | None]:
    """The pid and directory a lab domain's metadata names (None when absent)."""
    try:
        xml = _virsh(uri, "dumpxml", "--inactive", name)
    except LabVmError:
        return None, None
    lab = ET.fromstring(xml).find(f"metadata/{{{_NS}}}lab")
    if lab is None:
        return None, None
    pid = lab.get("owner_pid")
    directory = lab.get("directory")
    return (int(pid) if pid and pid.isdigit() else None), (Path(directory) if directory else None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str, *, uri: str = DEFAULT_URI) -> list[str]:
    """Remove lab domains named `prefix`... that this helper made for a process that
    is gone, with their files. Domains of a live process (a concurrent run, or this
    one) and domains without the helper's metadata are kept. Returns the names removed."""
    if not prefix:
        raise LabVmError("a prefix is required")
    removed = []
    for name in _virsh(uri, "list", "--all", "--name").split():
        if not name.startswith(prefix):
            continue
        pid, directory = _owner(uri, name)
        # No record: not made by this helper, so not ours to judge. A live owner: a
        # concurrent run (or this one) still uses it.
        if pid is None or _alive(pid):
            continue
        _remove_domain(uri, name)
        if directory is not None:
            _remove_files(directory, name)
        removed.append(name)
    return removed
