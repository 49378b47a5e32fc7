"""In-memory stand-ins for the ports, shipped so tests (ours and users') need no patching.

FakeImageTool (fake_images.py) keeps each image's own clusters as a dict, so a test can
read the view a chain presents (`read`) and prove a merge kept it. FakeHypervisor (here)
drives the same images. Every method can be made to fail (fake_faults.py):
`fail["method"] = SomeSnapgroupError(...)`, optionally after N successful calls
(`fail_after["method"] = N`), and for only N calls (`fail_times["method"] = N`: then it
works again, as a retried call may).

The engine calls them from several threads at once (a live delete's block commits, one
per disk, beside its own rebases and removals): every method runs under one lock that a
FakeHypervisor shares with its FakeImageTool, as libvirt serialises changes to a domain.
Progress is reported outside it (the caller's callback may raise or take its own lock).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, replace

from snapgroup.adapters.domxml import parse_domain, restore_xml
from snapgroup.domain.errors import HypervisorError, NotFound
from snapgroup.domain.models import (
    BlockJobProgress,
    DiskOverlay,
    DomainDisk,
    DomainInfo,
    FreezeResult,
    VmState,
)
from snapgroup.ports import ProgressFn
from snapgroup.testing.fake_faults import Faults, serialised
from snapgroup.testing.fake_images import FakeImage, FakeImageTool, merge_down
from snapgroup.testing.fake_memory import MemoryHypervisor

__all__ = ["FakeDomain", "FakeHypervisor", "FakeImage", "FakeImageTool", "lab_domain"]


@dataclass
class FakeDomain:
    uuid: str
    name: str
    state: VmState
    disks: list[DomainDisk]


class FakeHypervisor(MemoryHypervisor, Faults):
    def __init__(self, images: FakeImageTool) -> None:
        super().__init__()
        self.lock = images.lock  # a block commit changes images and the domain at once
        self.images = images
        self.domains: dict[str, FakeDomain] = {}
        # Guest agents: VM uuid -> the mountpoints its agent reports. A VM not in here
        # has no agent (freeze/thaw/guest_filesystems fail, as libvirt's do).
        self.agents: dict[str, tuple[str, ...]] = {}
        self.frozen: set[str] = set()  # VMs whose filesystems are frozen now
        self.pulls: dict[tuple[str, str], BlockJobProgress] = {}  # (vm, target): running
        # Memory state (snapgroup.testing.fake_memory): memory size, guest state, clock.
        self.memory: dict[str, int] = {}
        self.ram: dict[str, str] = {}
        self.clock_set: list[str] = []
        self.busy: set[str] = set()  # VMs libvirt is still at work on (wait_idle: False)

    @serialised
    def define(self, uuid: str, name: str, state: VmState, disks: Sequence[DomainDisk]) -> None:
        self.domains[uuid] = FakeDomain(uuid, name, state, list(disks))

    @serialised
    def list_vms(self) -> list[tuple[str, str]]:
        self._call("list_vms")
        return [(d.uuid, d.name) for d in self.domains.values()]

    @serialised
    def disk_path(self, uuid: str, target: str) -> str | None:
        return next(d.path for d in self.domains[uuid].disks if d.target == target)

    def _domain(self, vm: str) -> FakeDomain:
        key = vm.replace("-", "").lower()
        for domain in self.domains.values():
            if vm == domain.name or key == domain.uuid:
                return domain
        raise NotFound(f"Domain not found: {vm}")

    def _set_source(self, domain: FakeDomain, target: str, path: str) -> None:
        domain.disks = [replace(d, path=path) if d.target == target else d for d in domain.disks]

    # the port
    @serialised
    def lookup(self, vm: str) -> DomainInfo:
        self._call("lookup", vm)
        d = self._domain(vm)
        return DomainInfo(d.uuid, d.name, d.state, tuple(d.disks))

    @serialised
    def snapshot_disks(
        self, vm_uuid: str, overlays: Sequence[DiskOverlay], *, quiesce: bool = False
    ) -> None:
        self._call("snapshot_disks", vm_uuid, tuple(overlays))
        domain = self._domain(vm_uuid)
        for o in overlays:  # atomic: validate everything first
            if o.overlay not in self.images.images:
                raise HypervisorError(f"overlay {o.overlay} does not exist")
        for o in overlays:
            self._set_source(domain, o.target, o.overlay)

    @serialised
    def set_disk_sources(self, vm_uuid: str, sources: dict[str, str]) -> None:
        self._call("set_disk_sources", vm_uuid, dict(sources))
        domain = self._domain(vm_uuid)
        for target, path in sources.items():
            self._set_source(domain, target, path)

    def block_commit(
        self,
        vm_uuid: str,
        target: str,
        *,
        top: str | None,
        base: str,
        progress: ProgressFn | None = None,
    ) -> None:
        with self.lock:  # the copy and the pivot as one step: no other change between
            self._call("block_commit", vm_uuid, target, top, base)
            domain = self._domain(vm_uuid)
            active = next(d.path for d in domain.disks if d.target == target)
            assert active is not None
            if top is None:
                merge_down(self.images.images, active, base)
                self._set_source(domain, target, base)
            else:
                merge_down(self.images.images, top, base)
                above = next(p for p, i in self.images.images.items() if i.backing == top)
                self.images.images[above].backing = base
        if progress:
            progress(BlockJobProgress(1, 1))

    @serialised
    def settle_block_job(self, vm_uuid: str, target: str) -> None:
        self._call("settle_block_job", vm_uuid, target)

    @serialised
    def block_pull(self, vm_uuid: str, target: str, *, bandwidth: int | None = None) -> None:
        """A pull starts and runs until finish_pulls() (a test's "QEMU copied it")."""
        self._call("block_pull", vm_uuid, target)
        domain = self._domain(vm_uuid)
        if domain.state not in (VmState.RUNNING, VmState.PAUSED):
            raise HypervisorError(f"a block pull needs a running domain; {domain.name} is not")
        self.pulls[(domain.uuid, target)] = BlockJobProgress(0, 1 << 30)

    @serialised
    def block_job(self, vm_uuid: str, target: str) -> BlockJobProgress | None:
        return self.pulls.get((self._domain(vm_uuid).uuid, target))

    @serialised
    def cancel_block_job(self, vm_uuid: str, target: str) -> None:
        self._call("cancel_block_job", vm_uuid, target)
        self.pulls.pop((self._domain(vm_uuid).uuid, target), None)

    @serialised
    def pause(self, vm_uuid: str) -> None:
        self._call("pause", vm_uuid)
        domain = self._domain(vm_uuid)
        if domain.state is VmState.RUNNING:
            domain.state = VmState.PAUSED
        elif domain.state is not VmState.PAUSED:
            raise HypervisorError(f"domain {domain.name} is not running")

    @serialised
    def flush_disks(self, vm_uuid: str) -> None:
        self._call("flush_disks", vm_uuid)

    def finish_pulls(self) -> None:
        """Every running pull done: each top holds its chain's view, backed by nothing."""
        for (uuid, target), _ in list(self.pulls.items()):
            path = self.disk_path(uuid, target)
            assert path is not None
            self.images.images[path].clusters = self.images.read(path)
            self.images.images[path].backing = None
            del self.pulls[(uuid, target)]

    @serialised
    def shutdown(self, vm_uuid: str, *, timeout: float) -> None:
        self._call("shutdown", vm_uuid, timeout)
        self._domain(vm_uuid).state = VmState.STOPPED

    @serialised
    def start(self, vm_uuid: str) -> None:
        self._call("start", vm_uuid)
        domain = self._domain(vm_uuid)
        if domain.state.is_live:
            raise HypervisorError(f"domain {domain.name} is already running")
        domain.state = VmState.RUNNING

    @serialised
    def define_clone(
        self, vm_uuid: str, *, name: str, new_uuid: str, sources: dict[str, str]
    ) -> DomainInfo:
        self._call("define_clone", vm_uuid, name, new_uuid, dict(sources))
        original = self._domain(vm_uuid)
        if any(d.name == name or d.uuid == new_uuid for d in self.domains.values()):
            raise HypervisorError(f"domain {name} ({new_uuid}) already exists")
        shared = {d.target for d in original.disks if d.shareable or d.readonly}
        writable = {d.target for d in original.disks if d.device == "disk"} - shared
        if writable - set(sources):
            raise HypervisorError(f"writable disks {sorted(writable - set(sources))} not cloned")
        disks = [replace(d, path=sources.get(d.target, d.path), backing=()) for d in original.disks]
        self.define(new_uuid, name, VmState.STOPPED, disks)
        return self.lookup(new_uuid)

    @serialised
    def definition_xml(self, vm_uuid: str) -> str:
        self._call("definition_xml", vm_uuid)
        d = self._domain(vm_uuid)
        root = ET.Element("domain", type="qemu")
        ET.SubElement(root, "name").text = d.name
        ET.SubElement(root, "uuid").text = d.uuid
        devices = ET.SubElement(root, "devices")
        for disk in d.disks:
            el = ET.SubElement(devices, "disk", type=disk.source_type, device=disk.device)
            ET.SubElement(el, "driver", name="qemu", type=disk.format or "raw")
            if disk.path:
                ET.SubElement(el, "source", file=disk.path)
            ET.SubElement(el, "target", dev=disk.target)
            if disk.readonly:
                ET.SubElement(el, "readonly")
            if disk.shareable:
                ET.SubElement(el, "shareable")
        ET.SubElement(
            ET.SubElement(devices, "interface", type="network"), "mac", address="52:54:00:00:00:01"
        )
        return ET.tostring(root, encoding="unicode")

    @serialised
    def define_restored(
        self, xml: str, *, name: str, new_uuid: str, sources: dict[str, str]
    ) -> DomainInfo:
        self._call("define_restored", name, new_uuid, dict(sources))
        if any(d.name == name or d.uuid == new_uuid for d in self.domains.values()):
            raise HypervisorError(f"domain {name} ({new_uuid}) already exists")
        made = parse_domain(
            restore_xml(xml, name=name, uuid=new_uuid, sources=sources), VmState.STOPPED
        )
        self.define(new_uuid, name, VmState.STOPPED, made.disks)
        return self.lookup(new_uuid)

    @serialised
    def undefine(self, vm_uuid: str) -> None:
        self._call("undefine", vm_uuid)
        domain = self._domain(vm_uuid)
        if domain.state.is_live:
            raise HypervisorError(f"domain {domain.name} is running")
        del self.domains[domain.uuid]

    def _agent(self, vm_uuid: str) -> tuple[str, ...]:
        domain = self._domain(vm_uuid)
        if domain.uuid not in self.agents:
            raise HypervisorError("argument unsupported: QEMU guest agent is not configured")
        return self.agents[domain.uuid]

    @serialised
    def guest_filesystems(self, vm_uuid: str, *, timeout: int | None = None) -> tuple[str, ...]:
        self._call("guest_filesystems", vm_uuid, timeout)
        return self._agent(vm_uuid)

    @serialised
    def freeze(self, vm_uuid: str, *, timeout: int | None = None) -> FreezeResult:
        self._call("freeze", vm_uuid, timeout)
        mounts = self._agent(vm_uuid)
        self.frozen.add(self._domain(vm_uuid).uuid)
        return FreezeResult(frozen=mounts, count=len(mounts))

    @serialised
    def thaw(self, vm_uuid: str, *, timeout: int | None = None) -> int:
        self._call("thaw", vm_uuid, timeout)
        mounts = self._agent(vm_uuid)
        uuid = self._domain(vm_uuid).uuid
        if uuid not in self.frozen:
            return 0
        self.frozen.discard(uuid)
        return len(mounts)


def lab_domain(
    hv: FakeHypervisor,
    *,
    uuid: str = "a" * 32,
    name: str = "vm1",
    state: VmState = VmState.RUNNING,
    data_disks: int = 2,
    directory: str = "/lab",
) -> list[str]:
    """A domain with a root and `data_disks` qcow2 disks on fresh fake images."""
    paths = [os.path.join(directory, f"disk{i}.qcow2") for i in range(data_disks + 1)]
    disks = []
    for i, path in enumerate(paths):
        hv.images.add(path, data={0: f"base{i}"})
        disks.append(
            DomainDisk(
                target=f"vd{chr(ord('a') + i)}",
                device="disk",
                source_type="file",
                path=path,
                format="qcow2",
                boot_order=1 if i == 0 else None,
            )
        )
    hv.define(uuid, name, state, disks)
    return paths
