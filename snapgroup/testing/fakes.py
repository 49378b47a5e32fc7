"""In-memory stand-ins for the ports, shipped so tests (ours and users') need no patching.

FakeImageTool keeps each image's own clusters as a dict, so a test can read the view a
chain presents (`read`) and prove a merge kept it. FakeHypervisor drives the same images.
Every method can be made to fail: `fail["method"] = SomeSnapgroupError(...)`, optionally
after N successful calls (`fail_after["method"] = N`), and for only N calls
(`fail_times["method"] = N`: then it works again, as a retried call may).

The engine calls them from several threads at once (a live delete's block commits, one
per disk, beside its own rebases and removals): every method runs under one lock that a
FakeHypervisor shares with its FakeImageTool, as libvirt serialises changes to a domain.
Progress is reported outside it (the caller's callback may raise or take its own lock).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Concatenate, ParamSpec, TypeVar

from snapgroup.adapters.domxml import parse_domain, restore_xml
from snapgroup.domain.backup_manifest import ImageCheck
from snapgroup.domain.errors import HypervisorError, ImageToolError, NotFound, SnapgroupError
from snapgroup.domain.models import (
    BlockJobProgress,
    DiskOverlay,
    DomainDisk,
    DomainInfo,
    FreezeResult,
    ImageInfo,
    VmState,
)
from snapgroup.ports import ProgressFn
from snapgroup.testing.fake_memory import MemoryFiles, MemoryHypervisor


class _Faults:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.fail: dict[str, SnapgroupError] = {}
        self.fail_after: dict[str, int] = {}
        self.fail_times: dict[str, int] = {}
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def _call(self, method: str, *args: object) -> None:
        self.calls.append((method, args))
        if method in self.fail:
            remaining = self.fail_after.get(method, 0)
            if remaining > 0:
                self.fail_after[method] = remaining - 1
                return
            error = self.fail[method]
            if method in self.fail_times:
                self.fail_times[method] -= 1
                if self.fail_times[method] <= 0:
                    del self.fail[method], self.fail_times[method]
            raise error

    def called(self, method: str) -> list[tuple[object, ...]]:
        return [args for name, args in self.calls if name == method]


_F = TypeVar("_F", bound=_Faults)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _serialised(method: Callable[Concatenate[_F, _P], _R]) -> Callable[Concatenate[_F, _P], _R]:
    """The method under the fake's lock: one thread at a time changes or reads its state
    (a read-modify-write of a domain's disks from two threads lost a pivot)."""

    @functools.wraps(method)
    def locked(self: _F, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


ZERO = "\0"  # an allocated cluster that reads as zeros (as if never written)


@dataclass
class FakeImage:
    format: str = "qcow2"
    virtual_size: int = 1 << 30
    backing: str | None = None
    clusters: dict[int, str] = field(default_factory=dict)


class FakeImageTool(MemoryFiles, _Faults):
    def __init__(self, free: int = 1 << 40) -> None:
        super().__init__()
        self.images: dict[str, FakeImage] = {}
        self.free = free
        self.corrupt: set[str] = set()
        self.leaks: dict[str, int] = {}  # path -> leaked clusters (a writer killed mid-write)
        self._layers: dict[tuple[str, str, int, int, str | None], ImageInfo] = {}

    # helpers for tests
    @_serialised
    def add(
        self,
        path: str,
        *,
        backing: str | None = None,
        fmt: str = "qcow2",
        data: dict[int, str] | None = None,
    ) -> None:
        self.images[path] = FakeImage(format=fmt, backing=backing, clusters=dict(data or {}))

    @_serialised
    def write(self, path: str, cluster: int, value: str) -> None:
        self.images[path].clusters[cluster] = value

    @_serialised
    def read(self, path: str) -> dict[int, str]:
        """The guest-visible view of the chain topped by `path`."""
        view: dict[int, str] = {}
        for layer in reversed(self.chain(path)):
            view.update(self.images[layer.path].clusters)
        return {c: v for c, v in view.items() if v != ZERO}

    # the port
    @_serialised
    def chain(self, path: str, *, shared: bool = False) -> list[ImageInfo]:
        self._call("chain", path)
        layers: list[ImageInfo] = []
        current: str | None = path
        while current is not None:
            image = self.images.get(current) or self._from_file(current)
            if image is None:
                raise ImageToolError(f"qemu-img: could not open '{current}'")
            layers.append(self._layer(current, image))
            current = image.backing
        return layers

    def _from_file(self, path: str) -> FakeImage | None:
        """An image _written into a real directory, found at its path now (a backup
        repository renames its files: a partial's become the backup's)."""
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            image = FakeImage(
                virtual_size=doc["size"],
                backing=doc["backing"],
                clusters={int(c): v for c, v in doc["clusters"].items()},
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self.images[path] = image
        return image

    def _layer(self, path: str, image: FakeImage) -> ImageInfo:
        """The layer as `chain` reports it. The same (immutable) object while nothing it
        shows changes: a frozen dataclass built per layer (16 disks x 101 per create in
        bench 6) was the fake's own cost, none of the engine's."""
        key = (path, image.format, image.virtual_size, len(image.clusters), image.backing)
        layer = self._layers.get(key)
        if layer is None:
            layer = ImageInfo(
                path,
                image.format,
                image.virtual_size,
                len(image.clusters) * 65536,
                image.backing,
                "qcow2" if image.backing else None,
            )
            self._layers[key] = layer
        return layer

    @_serialised
    def create_overlay(
        self, path: str, *, backing: str, backing_format: str, size: int | None = None
    ) -> None:
        self._call("create_overlay", path, backing)
        if path in self.images:
            raise ImageToolError(f"{path} already exists")
        base = self.images.get(backing)
        if base is None and size is None:
            raise ImageToolError(f"could not open backing file {backing}")
        self.images[path] = FakeImage(
            virtual_size=size or (base.virtual_size if base else 0), backing=backing
        )

    def commit(self, top: str, *, base: str, progress: ProgressFn | None = None) -> None:
        with self.lock:
            self._call("commit", top, base)
            _merge_down(self.images, top, base)
        if progress:
            progress(BlockJobProgress(1, 1))

    @_serialised
    def rebase(self, image: str, *, backing: str | None, backing_format: str, unsafe: bool) -> None:
        self._call("rebase", image, backing)
        target = self.images[image]
        if not unsafe:
            # Copy every cluster the image does not hold whose old and new backing views
            # differ; ZERO stands for a cluster the new backing has but the old did not.
            old = self.read(target.backing) if target.backing else {}
            new = self.read(backing) if backing else {}
            for cluster in set(old) | set(new):
                if cluster not in target.clusters and old.get(cluster) != new.get(cluster):
                    target.clusters[cluster] = old.get(cluster, ZERO)
        target.backing = backing

    # Backups. A file's damage for `check`: `corrupt` holds the paths that report it.
    @_serialised
    def flatten(
        self,
        source: str,
        target: str,
        *,
        shared: bool,
        compress: bool = False,
        progress: ProgressFn | None = None,
    ) -> None:
        self._call("flatten", source, target)
        size = self.images[self.chain(source)[0].path].virtual_size
        self.images[target] = FakeImage(virtual_size=size, clusters=self.read(source))
        _written(target, self.images[target])

    @_serialised
    def export_incremental(
        self,
        layers: Sequence[str],
        target: str,
        *,
        base_name: str,
        compress: bool = False,
        progress: ProgressFn | None = None,
    ) -> None:
        self._call("export_incremental", tuple(layers), target, base_name)
        base = os.path.normpath(os.path.join(os.path.dirname(target), base_name))
        if not layers or (base not in self.images and self._from_file(base) is None):
            raise ImageToolError(f"incremental export {target}: no layers or no base {base}")
        clusters: dict[int, str] = {}
        for layer in layers:  # bottom first: the top layer wins
            clusters.update(self.images[layer].clusters)
        size = self.images[layers[-1]].virtual_size
        self.images[target] = FakeImage(virtual_size=size, backing=base, clusters=clusters)
        _written(target, self.images[target])

    @_serialised
    def check(self, path: str, *, shared: bool = False) -> ImageCheck:
        self._call("check", path)
        if path not in self.images and self._from_file(path) is None:
            raise ImageToolError(f"qemu-img: could not open '{path}'")
        leaks = self.leaks.get(path, 0)
        return ImageCheck(corruptions=int(path in self.corrupt), leaks=leaks, check_errors=0)

    @_serialised
    def repair_leaks(self, path: str) -> ImageCheck:
        self._call("repair_leaks", path)
        self.leaks.pop(path, None)
        return self.check(path)

    @_serialised
    def set_backing(self, image: str, *, backing_name: str | None, safe: bool) -> None:
        base = None
        if backing_name is not None:
            base = os.path.normpath(os.path.join(os.path.dirname(image), backing_name))
        self.rebase(image, backing=base, backing_format="qcow2", unsafe=not safe)

    @_serialised
    def remove(self, path: str) -> None:
        self._call("remove", path)
        self.images.pop(path, None)

    def wait_released(self) -> None:
        """Space is released at once here."""

    @_serialised
    def exists(self, path: str) -> bool:
        return path in self.images

    def free_bytes(self, directory: str) -> int:
        return self.free

    def filesystem(self, directory: str) -> int:
        return 0  # one filesystem holds every fake image


def _written(target: str, image: FakeImage) -> None:
    """A copy into a real directory (a backup repository's: the real BackupRepo hashes,
    sizes and renames what is there) is also written as a file: the image as JSON."""
    if os.path.isdir(os.path.dirname(target)):
        with open(target, "w", encoding="utf-8") as f:
            doc = {"size": image.virtual_size, "backing": image.backing, "clusters": image.clusters}
            json.dump(doc, f, sort_keys=True)


def _merge_down(images: dict[str, FakeImage], top: str, base: str) -> None:
    """Copy every cluster between top and base (top winning) into base."""
    layers = []
    current: str | None = top
    while current is not None and current != base:
        layers.append(images[current])
        current = images[current].backing
    if current != base:
        raise ImageToolError(f"{base} is not below {top}")
    for layer in reversed(layers):
        images[base].clusters.update(layer.clusters)


@dataclass
class FakeDomain:
    uuid: str
    name: str
    state: VmState
    disks: list[DomainDisk]


class FakeHypervisor(MemoryHypervisor, _Faults):
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

    @_serialised
    def define(self, uuid: str, name: str, state: VmState, disks: Sequence[DomainDisk]) -> None:
        self.domains[uuid] = FakeDomain(uuid, name, state, list(disks))

    @_serialised
    def list_vms(self) -> list[tuple[str, str]]:
        self._call("list_vms")
        return [(d.uuid, d.name) for d in self.domains.values()]

    @_serialised
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
    @_serialised
    def lookup(self, vm: str) -> DomainInfo:
        self._call("lookup", vm)
        d = self._domain(vm)
        return DomainInfo(d.uuid, d.name, d.state, tuple(d.disks))

    @_serialised
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

    @_serialised
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
                _merge_down(self.images.images, active, base)
                self._set_source(domain, target, base)
            else:
                _merge_down(self.images.images, top, base)
                above = next(p for p, i in self.images.images.items() if i.backing == top)
                self.images.images[above].backing = base
        if progress:
            progress(BlockJobProgress(1, 1))

    @_serialised
    def settle_block_job(self, vm_uuid: str, target: str) -> None:
        self._call("settle_block_job", vm_uuid, target)

    @_serialised
    def block_pull(self, vm_uuid: str, target: str, *, bandwidth: int | None = None) -> None:
        """A pull starts and runs until finish_pulls() (a test's "QEMU copied it")."""
        self._call("block_pull", vm_uuid, target)
        domain = self._domain(vm_uuid)
        if domain.state not in (VmState.RUNNING, VmState.PAUSED):
            raise HypervisorError(f"a block pull needs a running domain; {domain.name} is not")
        self.pulls[(domain.uuid, target)] = BlockJobProgress(0, 1 << 30)

    @_serialised
    def block_job(self, vm_uuid: str, target: str) -> BlockJobProgress | None:
        return self.pulls.get((self._domain(vm_uuid).uuid, target))

    @_serialised
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

    @_serialised
    def shutdown(self, vm_uuid: str, *, timeout: float) -> None:
        self._call("shutdown", vm_uuid, timeout)
        self._domain(vm_uuid).state = VmState.STOPPED

    @_serialised
    def start(self, vm_uuid: str) -> None:
        self._call("start", vm_uuid)
        domain = self._domain(vm_uuid)
        if domain.state.is_live:
            raise HypervisorError(f"domain {domain.name} is already running")
        domain.state = VmState.RUNNING

    @_serialised
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

    @_serialised
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

    @_serialised
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

    @_serialised
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

    @_serialised
    def guest_filesystems(self, vm_uuid: str, *, timeout: int | None = None) -> tuple[str, ...]:
        self._call("guest_filesystems", vm_uuid, timeout)
        return self._agent(vm_uuid)

    @_serialised
    def freeze(self, vm_uuid: str, *, timeout: int | None = None) -> FreezeResult:
        self._call("freeze", vm_uuid, timeout)
        mounts = self._agent(vm_uuid)
        self.frozen.add(self._domain(vm_uuid).uuid)
        return FreezeResult(frozen=mounts, count=len(mounts))

    @_serialised
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
