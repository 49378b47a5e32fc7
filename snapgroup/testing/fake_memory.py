"""The memory-state verbs of the fakes (memory groups), mixed into FakeHypervisor and
FakeImageTool (snapgroup.testing.fakes, fake_images.py).

A fake guest's "RAM" is a string (`FakeHypervisor.ram[vm]`, "" until a test sets it):
a memory snapshot writes it into the memory file (a fake image of format "memory"
whose cluster 0 holds it), and a restore reads it back, so a test can prove a revert
resumed the state of the snapshot and not a later one. Cluster OWNER of a memory file
names the domain whose state it is (as the save image's XML does): a restore of another
domain refuses it, as libvirt 9.0 does, until adopt_memory_state made it that domain's.
A backup holds it packed (pack_memory: a "memory-packed" image, written into the real
repository directory as the fake's copies are), unpack_memory gives the file back.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from snapgroup.domain.errors import HypervisorError, ImageToolError
from snapgroup.domain.models import DiskOverlay, FileDigest, VmState

MEMORY_FORMAT = "memory"  # a fake image that is a saved memory state
PACKED_FORMAT = "memory-packed"  # its copy in a backup repository
OWNER = -1  # the cluster naming the domain whose state a memory file holds
NAME = -2  # and its name then (libvirt 9.0 restores it only under that name)
DEFAULT_MEMORY = 512 << 20


class MemoryFiles:
    """FakeImageTool's digest: the size recorded for the file and a SHA-256 of its
    clusters (a test changes the file with FakeImageTool.write)."""

    if TYPE_CHECKING:
        lock: threading.RLock
        images: dict[str, Any]

        def _call(self, method: str, *args: object) -> None: ...
        def _from_file(self, path: str) -> Any: ...

    def pack_memory(self, source: str, target: str) -> None:
        with self.lock:
            self._call("pack_memory", source, target)
            image = self.images.get(source)
            if image is None or image.format != MEMORY_FORMAT:
                raise ImageToolError(f"{source} is not a saved memory state")
            if target in self.images:
                raise ImageToolError(f"{target} already exists")
            self._packed(target, image, PACKED_FORMAT)

    def unpack_memory(self, source: str, target: str, *, size: int) -> None:
        with self.lock:
            self._call("unpack_memory", source, target, size)
            image = self.images.get(source) or self._from_file(source)
            if image is None:
                raise ImageToolError(f"cannot read {source}")
            if target in self.images:
                raise ImageToolError(f"{target} already exists")
            self._packed(target, image, MEMORY_FORMAT)

    def _packed(self, target: str, image: Any, fmt: str) -> None:
        copy = type(image)(
            format=fmt, virtual_size=image.virtual_size, clusters=dict(image.clusters)
        )
        self.images[target] = copy
        _write_into_directory(target, copy)

    def digest(self, path: str) -> FileDigest:
        with self.lock:
            self._call("digest", path)
            image = self.images.get(path)
            if image is None:
                raise ImageToolError(f"cannot read {path}: No such file or directory")
            text = json.dumps(image.clusters, sort_keys=True).encode()
            return FileDigest(image.virtual_size, hashlib.sha256(text).hexdigest())


class MemoryHypervisor:
    """FakeHypervisor's memory-state verbs. `memory[vm]`: the domain's current memory
    in bytes (DEFAULT_MEMORY when unset); `ram[vm]`: its guest's state; `clock_set`:
    the VMs whose guest clock was set, in order; `busy`: the VMs libvirt is still at
    work on (a job a killed process asked for: wait_idle says so)."""

    if TYPE_CHECKING:
        lock: threading.RLock
        images: Any  # the FakeImageTool (not imported: fakes imports this module)
        agents: dict[str, tuple[str, ...]]
        memory: dict[str, int]
        ram: dict[str, str]
        clock_set: list[str]
        busy: set[str]

        def _call(self, method: str, *args: object) -> None: ...
        def _domain(self, vm: str) -> Any: ...
        def _set_source(self, domain: Any, target: str, path: str) -> None: ...

    def memory_bytes(self, vm_uuid: str) -> int:
        with self.lock:
            self._call("memory_bytes", vm_uuid)
            domain = self._domain(vm_uuid)
            return self.memory.get(domain.uuid, DEFAULT_MEMORY)

    def snapshot_with_memory(
        self, vm_uuid: str, overlays: Sequence[DiskOverlay], memory_file: str, *, live: bool
    ) -> None:
        with self.lock:
            self._call("snapshot_with_memory", vm_uuid, tuple(overlays), memory_file, live)
            domain = self._domain(vm_uuid)
            if not domain.state.is_live:
                raise HypervisorError(f"domain {domain.name} is not running")
            if memory_file in self.images.images:
                raise HypervisorError(f"memory file {memory_file} already exists")
            for o in overlays:  # atomic: validate everything first
                if o.overlay not in self.images.images:
                    raise HypervisorError(f"overlay {o.overlay} does not exist")
            data = {0: self.ram.get(domain.uuid, ""), OWNER: domain.uuid, NAME: domain.name}
            self.images.add(memory_file, fmt=MEMORY_FORMAT, data=data)
            self.images.images[memory_file].virtual_size = self.memory.get(
                domain.uuid, DEFAULT_MEMORY
            )
            for o in overlays:
                self._set_source(domain, o.target, o.overlay)

    def restore_memory(
        self, vm_uuid: str, memory_file: str, sources: dict[str, str], *, paused: bool
    ) -> None:
        with self.lock:
            self._call("restore_memory", vm_uuid, memory_file, dict(sources), paused)
            domain = self._domain(vm_uuid)
            if domain.state.is_live:
                raise HypervisorError(f"domain {domain.name} is already running")
            image = self.images.images.get(memory_file)
            if image is None or image.format != MEMORY_FORMAT:
                raise HypervisorError(f"cannot restore from {memory_file}: not a saved state")
            if image.clusters.get(OWNER, domain.uuid) != domain.uuid:
                raise HypervisorError(
                    f"saved state {memory_file} is domain {image.clusters[OWNER]}'s, "
                    f"not {domain.name}'s"
                )
            if image.clusters.get(NAME, domain.name) != domain.name:
                raise HypervisorError(
                    f"Target domain name '{domain.name}' does not match source "
                    f"'{image.clusters[NAME]}'"
                )
            for target, path in sources.items():
                if path not in self.images.images:
                    raise HypervisorError(f"disk {target}: {path} does not exist")
            for target, path in sources.items():
                self._set_source(domain, target, path)
            self.ram[domain.uuid] = image.clusters.get(0, "")
            domain.state = VmState.PAUSED if paused else VmState.RUNNING

    def adopt_memory_state(self, vm_uuid: str, memory_file: str, *, into: str | None) -> None:
        with self.lock:
            self._call("adopt_memory_state", vm_uuid, memory_file, into)
            domain = self._domain(vm_uuid)
            if domain.state.is_live:
                raise HypervisorError(f"domain {domain.name} is running: its state is its own")
            image = self.images.images.get(memory_file)
            if image is None or image.format != MEMORY_FORMAT:
                raise HypervisorError(f"{memory_file} is not a saved state")
            if into is not None:
                if into in self.images.images:
                    raise HypervisorError(f"cannot create {into}: File exists")
                self.images.add(into, fmt=MEMORY_FORMAT, data=image.clusters)
                self.images.images[into].virtual_size = image.virtual_size
                image = self.images.images[into]
            image.clusters[OWNER] = domain.uuid
            image.clusters[NAME] = domain.name

    def saved_domain_name(self, memory_file: str) -> str:
        with self.lock:
            self._call("saved_domain_name", memory_file)
            image = self.images.images.get(memory_file)
            if image is None or image.format != MEMORY_FORMAT:
                raise HypervisorError(f"{memory_file} is not a saved state")
            return str(image.clusters.get(NAME, ""))

    def resume(self, vm_uuid: str) -> None:
        with self.lock:
            self._call("resume", vm_uuid)
            domain = self._domain(vm_uuid)
            if domain.state is VmState.PAUSED:
                domain.state = VmState.RUNNING
            elif domain.state is not VmState.RUNNING:
                raise HypervisorError(f"domain {domain.name} is not running")

    def wait_idle(self, vm_uuid: str, *, timeout: float) -> bool:
        """False for the VMs in `busy` (as if libvirt were still at a job a killed
        process asked for), at once."""
        with self.lock:
            self._call("wait_idle", vm_uuid, timeout)
            return self._domain(vm_uuid).uuid not in self.busy

    def set_guest_time(self, vm_uuid: str, *, timeout: int | None = None) -> None:
        with self.lock:
            self._call("set_guest_time", vm_uuid, timeout)
            domain = self._domain(vm_uuid)
            if domain.uuid not in self.agents:
                raise HypervisorError("argument unsupported: QEMU guest agent is not configured")
            self.clock_set.append(domain.uuid)


def _write_into_directory(target: str, image: Any) -> None:
    """As fake_images._written: a copy into a real directory is a real file (JSON)."""
    if os.path.isdir(os.path.dirname(target)):
        with open(target, "w", encoding="utf-8") as f:
            doc = {"size": image.virtual_size, "backing": None, "clusters": image.clusters}
            json.dump(doc, f, sort_keys=True)
