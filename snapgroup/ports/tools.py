"""The two tools an operation drives on a VM's disks: libvirt (Hypervisor) and qemu-img
(ImageTool), and the progress their long jobs report (ProgressFn)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from snapgroup.domain.backup_manifest import ImageCheck
from snapgroup.domain.models import (
    BlockJobProgress,
    DiskOverlay,
    DomainInfo,
    FileDigest,
    FreezeResult,
    ImageInfo,
)

ProgressFn = Callable[[BlockJobProgress], None]


class Hypervisor(Protocol):
    """libvirt. Every method raises HypervisorError / HypervisorUnavailable / NotFound."""

    def lookup(self, vm: str) -> DomainInfo:
        """A domain by name, UUID (dashed or 32 hex). Disks from the live XML when running,
        else from the persistent definition."""
        ...

    def snapshot_disks(
        self, vm_uuid: str, overlays: Sequence[DiskOverlay], *, quiesce: bool = False
    ) -> None:
        """ONE atomic external disk-only snapshot of a running/paused domain onto
        pre-created overlays (REUSE_EXT|NO_METADATA|ATOMIC); every other disk snapshot='no'."""
        ...

    def set_disk_sources(self, vm_uuid: str, sources: dict[str, str]) -> None:
        """Stopped domain: redefine the persistent XML so each target's source file is
        sources[target] (a qcow2 file). One defineXML call: all or nothing."""
        ...

    def block_commit(
        self,
        vm_uuid: str,
        target: str,
        *,
        top: str | None,
        base: str,
        progress: ProgressFn | None = None,
    ) -> None:
        """Running domain: merge `top` (None = the active layer) down into `base` and wait.
        For the active layer, pivot to `base` when the job is ready. Rewrites the
        backing link of top's child to `base`."""
        ...

    def settle_block_job(self, vm_uuid: str, target: str) -> None:
        """Finish a block job an interrupted process left on the disk: wait for a commit
        to end; pivot an active commit that is ready. No job: nothing to do."""
        ...

    def block_pull(self, vm_uuid: str, target: str, *, bandwidth: int | None = None) -> None:
        """Running domain: start copying everything the disk's backing chain holds into
        its top file (a libvirt block pull, QEMU's work: it goes on without us) and
        return at once; `bandwidth`: at most that many MiB/s. When the job ends the top
        file stands alone."""
        ...

    def block_job(self, vm_uuid: str, target: str) -> BlockJobProgress | None:
        """The disk's block job now, as progress; None when it has none (or the domain
        does not run)."""
        ...

    def cancel_block_job(self, vm_uuid: str, target: str) -> None:
        """Stop the disk's block job where it is (a pull: what it copied stays, the
        disk still reads its backing chain). No job: nothing to do."""
        ...

    def pause(self, vm_uuid: str) -> None:
        """Suspend a running domain's guest (virDomainSuspend: its QEMU stays, its
        vCPUs stop); a paused one is left as it is."""
        ...

    def flush_disks(self, vm_uuid: str) -> None:
        """Make what QEMU wrote to a running domain's disks durable, its image metadata
        included (a pulled top's cluster tables may sit in QEMU's cache while its header
        already names no backing file): the domain is paused, which flushes every disk,
        and resumed at once. A domain that does not run has nothing cached."""
        ...

    def shutdown(self, vm_uuid: str, *, timeout: float) -> None:
        """Stop a running or paused domain: ACPI shutdown, then power it off if it is still
        up after `timeout` seconds (0: power off at once). Returns once it is shut off."""
        ...

    def start(self, vm_uuid: str) -> None:
        """Start a defined, stopped domain."""
        ...

    def define_clone(
        self, vm_uuid: str, *, name: str, new_uuid: str, sources: dict[str, str]
    ) -> DomainInfo:
        """Define a new persistent (stopped) domain from vm_uuid's persistent definition:
        that name and UUID, new MAC addresses, each target in `sources` on that qcow2
        file (no stored backing chain), the same devices otherwise. Every writable disk
        must be in `sources`: two VMs never share one."""
        ...

    def undefine(self, vm_uuid: str) -> None:
        """Remove a stopped domain's definition; its files are left alone."""
        ...

    def list_vms(self) -> list[tuple[str, str]]:
        """(uuid as 32 hex digits, name) of every domain, defined or transient."""
        ...

    def definition_xml(self, vm_uuid: str) -> str:
        """The domain's persistent definition (inactive XML): what a backup keeps."""
        ...

    def define_restored(
        self, xml: str, *, name: str, new_uuid: str, sources: dict[str, str]
    ) -> DomainInfo:
        """Define a new persistent (stopped) domain from a saved definition (a backup's):
        that name and UUID, new MAC addresses, each target in `sources` on that qcow2
        file; writable disks not in `sources` are dropped (never shared with the
        original). Refuses a name or UUID already defined."""
        ...

    # The guest agent (application consistency). `timeout`: seconds to wait for the
    # agent (None: libvirt's default, which may be forever).
    def guest_filesystems(self, vm_uuid: str, *, timeout: int | None = None) -> tuple[str, ...]:
        """Mountpoints of the guest's filesystems (guest-get-fsinfo). Fails when there is
        no agent or it does not answer: the cheap probe before a freeze."""
        ...

    def freeze(self, vm_uuid: str, *, timeout: int | None = None) -> FreezeResult:
        """Freeze every guest filesystem (guest-fsfreeze-freeze)."""
        ...

    def thaw(self, vm_uuid: str, *, timeout: int | None = None) -> int:
        """Thaw every frozen guest filesystem; the count thawed (0: none was frozen)."""
        ...

    def set_guest_time(self, vm_uuid: str, *, timeout: int | None = None) -> None:
        """Set the guest's clock to the host's now (guest-set-time): after a memory
        state is resumed, the guest's clock is where it was at the snapshot."""
        ...

    # Memory state (memory groups: snapgroup.ops.memory_state).
    def memory_bytes(self, vm_uuid: str) -> int:
        """The running domain's current memory: what its saved state needs at most."""
        ...

    def snapshot_with_memory(
        self, vm_uuid: str, overlays: Sequence[DiskOverlay], memory_file: str, *, live: bool
    ) -> None:
        """ONE external snapshot of a running domain: its memory state saved to
        `memory_file` (a new file) and every disk in `overlays` switched onto its
        pre-created overlay, at one instant (ATOMIC|NO_METADATA|REUSE_EXT; other disks
        snapshot='no'). The guest is paused for the save, or with `live` runs while most
        of the memory is copied. It runs again afterwards."""
        ...

    def restore_memory(
        self, vm_uuid: str, memory_file: str, sources: dict[str, str], *, paused: bool
    ) -> None:
        """Start the stopped domain from a memory state `snapshot_with_memory` saved,
        each target in `sources` on that qcow2 file (its backing chain read from the
        file), running (or `paused`). Only the running domain is changed: its persistent
        definition is set_disk_sources' business."""
        ...

    def saved_domain_name(self, memory_file: str) -> str:
        """The domain name a saved memory state carries (its header's XML): libvirt
        9.0 restores it only into the domain of that name, not after a rename."""
        ...

    def adopt_memory_state(self, vm_uuid: str, memory_file: str, *, into: str | None) -> None:
        """The saved state in `memory_file` made the stopped domain `vm_uuid`'s (a clone,
        a restored backup: its name, UUID, MACs, disks as it is defined now), written as
        the new file `into`, or with None into `memory_file` itself (a file snapgroup
        just wrote). restore_memory then starts the domain from it; the source is never
        changed. The guest keeps its NIC's old MAC until the NIC is reset."""
        ...

    def resume(self, vm_uuid: str) -> None:
        """Let a paused domain run; a running one is left as it is."""
        ...

    def wait_idle(self, vm_uuid: str, *, timeout: float) -> bool:
        """Wait until libvirt runs no job on the domain: a snapshot, a save or a restore
        goes on inside libvirtd when the process that asked for it is killed. False
        when it still does after `timeout` seconds."""
        ...


class ImageTool(Protocol):
    """qemu-img, and the files it makes. Raises ImageToolError."""

    def chain(self, path: str, *, shared: bool = False) -> list[ImageInfo]:
        """`qemu-img info --backing-chain`, top first. `shared` (-U) for images a
        running QEMU holds."""
        ...

    def create_overlay(
        self, path: str, *, backing: str, backing_format: str, size: int | None = None
    ) -> None:
        """A new qcow2 file backed by `backing`. With `size`, the backing file is not
        opened (safe while QEMU holds it). Mode 0600; never overwrites."""
        ...

    def create_overlays(
        self, overlays: Sequence[DiskOverlay], *, sizes: Mapping[str, int], backing_format: str
    ) -> None:
        """create_overlay of each `overlay` on its `current`, of sizes[target] bytes: all
        or none. On a failure every file this call made is removed (none that was there
        before) and the first error raised. The tool picks how: in-process writes one
        after another, tool processes side by side."""
        ...

    def commit(self, top: str, *, base: str, progress: ProgressFn | None = None) -> None:
        """Offline: merge `top` into `base` (a file lower in top's chain)."""
        ...

    def rebase(self, image: str, *, backing: str | None, backing_format: str, unsafe: bool) -> None:
        """Offline: point `image` at `backing` (None: standalone); `unsafe` only rewrites
        the header, a safe rebase first copies what differs between old and new backing."""
        ...

    # Backups (a repository's files).
    def flatten(
        self,
        source: str,
        target: str,
        *,
        shared: bool,
        compress: bool = False,
        progress: ProgressFn | None = None,
    ) -> None:
        """A new standalone qcow2 `target` with the guest view of `source`'s chain (full
        export, restore). `shared` (-U): the source may be a running QEMU's backing file.
        `compress`: its clusters compressed (those that shrink)."""
        ...

    def pack_memory(self, source: str, target: str) -> None:
        """A memory group's saved state (`source`, a raw file) as the new compressed
        image `target` (a backup's copy)."""
        ...

    def unpack_memory(self, source: str, target: str, *, size: int) -> None:
        """pack_memory's copy back as the new raw file `target` (0600) of `size` bytes."""
        ...

    def export_incremental(
        self,
        layers: Sequence[str],
        target: str,
        *,
        base_name: str,
        compress: bool = False,
        progress: ProgressFn | None = None,
    ) -> None:
        """A new qcow2 `target` backed by `base_name` (a name relative to target's
        directory, written as is) holding exactly the clusters allocated in `layers`
        (bottom first: the files above the base's point in time up to the exported one),
        compressed with `compress`."""
        ...

    def check(self, path: str, *, shared: bool = False) -> ImageCheck:
        """`qemu-img check` of the file by itself (its backing file is not opened).
        `shared` (-U): the file may be open in a running QEMU (read-only: a backing
        file; a file QEMU writes gives no reliable answer)."""
        ...

    def repair_leaks(self, path: str) -> ImageCheck:
        """`qemu-img check -r leaks`: free the clusters nothing references (a writer
        killed mid-write leaves them); the check of what remains. Needs the file to
        itself: never call it on a file a running QEMU has open."""
        ...

    def set_backing(self, image: str, *, backing_name: str | None, safe: bool) -> None:
        """Point `image` at `backing_name` (relative to its directory; None: standalone).
        `safe` first copies what differs between old and new backing view."""
        ...

    def remove(self, path: str) -> None:
        """Delete a file the engine made; a missing file is not an error. The name is
        gone on return; its space may be released a moment later (wait_released)."""
        ...

    def wait_released(self) -> None:
        """Wait until the space of every file removed so far is released."""
        ...

    def exists(self, path: str) -> bool: ...

    def digest(self, path: str) -> FileDigest:
        """The size and SHA-256 of a file (a memory group's saved state)."""
        ...

    def free_bytes(self, directory: str) -> int: ...

    def filesystem(self, directory: str) -> int:
        """Which filesystem holds `directory` (st_dev): merges writing to the same one
        share its free space."""
        ...
