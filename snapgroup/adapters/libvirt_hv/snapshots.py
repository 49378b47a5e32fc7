"""Snapshot verbs: one atomic external snapshot onto overlays snapgroup made, of the
disks only or with the memory state (memory groups)."""

from __future__ import annotations

from collections.abc import Sequence

import libvirt

from snapgroup.adapters.domxml import snapshot_xml
from snapgroup.adapters.libvirt_hv.connection import LibvirtConnection
from snapgroup.domain.errors import HypervisorError, InvalidArgument, NotFound
from snapgroup.domain.models import DiskOverlay, DomainInfo

_DISK_ONLY_FLAGS = (
    libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
)
# With the memory: the same without DISK_ONLY. The guest is paused while its memory is
# written (LIVE: it runs during most of the copy) and runs again afterwards.
_MEMORY_FLAGS = (
    libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
)


class Snapshots(LibvirtConnection):
    def snapshot_disks(
        self, vm_uuid: str, overlays: Sequence[DiskOverlay], *, quiesce: bool = False
    ) -> None:
        dom = self._domain(vm_uuid)
        info = self._info(dom)
        xml = snapshot_xml(overlays, _checked_targets(info, overlays))
        flags = _DISK_ONLY_FLAGS
        if quiesce:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        with self._calls():
            dom.snapshotCreateXML(xml, flags)

    def snapshot_with_memory(
        self, vm_uuid: str, overlays: Sequence[DiskOverlay], memory_file: str, *, live: bool
    ) -> None:
        dom = self._domain(vm_uuid)
        info = self._info(dom)
        targets = _checked_targets(info, overlays)
        xml = snapshot_xml(overlays, targets, memory_file=memory_file)
        flags = _MEMORY_FLAGS
        if live:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE
        with self._calls():
            dom.snapshotCreateXML(xml, flags)


def _checked_targets(info: DomainInfo, overlays: Sequence[DiskOverlay]) -> list[str]:
    """Every target of the domain, once each overlay is known to go on its disk's
    current top (a live domain's)."""
    if not info.state.is_live:
        raise HypervisorError(
            f"a live snapshot needs a running or paused domain; {info.name} is {info.state.value}"
        )
    disks = {disk.target: disk for disk in info.disks}
    for overlay in overlays:
        disk = disks.get(overlay.target)
        if disk is None:
            raise NotFound(f"domain {info.name} has no disk {overlay.target}")
        # REUSE_EXT trusts the overlay's header blindly (QEMU stacks it on whatever
        # is on top now), so a stale view here would silently break the chain.
        if disk.source_type != "file" or disk.path != overlay.current:
            raise InvalidArgument(
                f"disk {overlay.target}: expected top file {overlay.current}, "
                f"the domain has {disk.source_type} {disk.path}"
            )
        if overlay.overlay == overlay.current:
            raise InvalidArgument(f"disk {overlay.target}: overlay is the current top")
    return [disk.target for disk in info.disks]
