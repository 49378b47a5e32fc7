"""Life-cycle verbs: a domain started, shut down (ACPI, then powered off), started
from a saved memory state (memory groups), resumed; its memory's size.

libvirt 9.0 takes external memory+disk snapshots but cannot revert to them (9.7 can).
Their memory file is a save image (`virsh save`'s format), which restoreFlags starts
from, given a domain XML whose disks point elsewhere: restore_memory puts each disk
on the overlay snapgroup made over the snapshot's file, without a stored
<backingStore> (QEMU reads the chain from the overlay's header). Only the running
domain gets that XML; the persistent definition is set_disk_sources' to change.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import libvirt

from snapgroup.adapters import save_image
from snapgroup.adapters.domxml import normalize_uuid, parse_domain, with_disk_sources
from snapgroup.adapters.libvirt_hv.connection import LibvirtConnection
from snapgroup.adapters.libvirt_hv.errors import translate
from snapgroup.domain.errors import HypervisorError, InvalidArgument, NotFound
from snapgroup.domain.models import VmState

log = logging.getLogger(__name__)


class Lifecycle(LibvirtConnection):
    def shutdown(self, vm_uuid: str, *, timeout: float) -> None:
        dom = self._domain(vm_uuid)
        deadline = time.monotonic() + max(0.0, timeout)
        if timeout > 0:
            try:
                with self._calls():
                    if not dom.isActive():
                        return
                    dom.shutdown()  # ACPI: a guest that ignores it is powered off below
            except HypervisorError:
                log.info("domain %s refused an ACPI shutdown; powering it off", vm_uuid)
            while time.monotonic() < deadline:
                with self._calls():
                    if not dom.isActive():
                        return
                time.sleep(self.poll_interval)
        try:
            with self._calls():
                dom.destroy()  # synchronous: QEMU is gone when it returns
        except HypervisorError:
            with self._calls():
                if dom.isActive():
                    raise
        log.info("domain %s powered off", vm_uuid)

    def start(self, vm_uuid: str) -> None:
        dom = self._domain(vm_uuid)
        with self._calls():
            dom.create()

    def resume(self, vm_uuid: str) -> None:
        dom = self._domain(vm_uuid)
        with self._calls():
            state = int(dom.state()[0])
            if state == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            elif state != libvirt.VIR_DOMAIN_RUNNING:
                raise HypervisorError(f"domain {dom.name()} is not running (state {state})")

    def wait_idle(self, vm_uuid: str, *, timeout: float) -> bool:
        dom = self._domain(vm_uuid)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                if not _busy(dom):
                    return True
            except NotFound:
                return True  # undefined meanwhile: no job either
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_interval)

    def memory_bytes(self, vm_uuid: str) -> int:
        dom = self._domain(vm_uuid)
        with self._calls():
            # [state, max memory KiB, current memory KiB, vCPUs, CPU time]
            return int(dom.info()[2]) * 1024

    def restore_memory(
        self, vm_uuid: str, memory_file: str, sources: dict[str, str], *, paused: bool
    ) -> None:
        dom = self._domain(vm_uuid)
        conn = self._connection()
        with self._calls():
            if dom.isActive():
                raise HypervisorError(f"domain {dom.name()} is running: stop it before a restore")
            xml = str(
                conn.saveImageGetXMLDesc(memory_file, libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE)
            )
        saved = parse_domain(xml, VmState.STOPPED)
        if saved.uuid != normalize_uuid(vm_uuid):
            raise InvalidArgument(f"{memory_file} holds the state of domain {saved.uuid}")
        flags = libvirt.VIR_DOMAIN_SAVE_PAUSED if paused else libvirt.VIR_DOMAIN_SAVE_RUNNING
        with self._calls():
            conn.restoreFlags(memory_file, with_disk_sources(xml, sources), flags)

    def saved_domain_name(self, memory_file: str) -> str:
        return parse_domain(save_image.read_image(memory_file).xml, VmState.STOPPED).name


# A paused domain libvirt is at work on: saving its memory for a snapshot or a save,
# starting it from a saved state (a restore), dumping or migrating it.
_WORKING = frozenset(
    {
        libvirt.VIR_DOMAIN_PAUSED_SNAPSHOT,
        libvirt.VIR_DOMAIN_PAUSED_SAVE,
        libvirt.VIR_DOMAIN_PAUSED_STARTING_UP,
        libvirt.VIR_DOMAIN_PAUSED_DUMP,
        libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
    }
)


def _busy(dom: Any) -> bool:
    """libvirt runs a job on the domain (virsh domjobinfo: Bounded/Unbounded), or holds
    it paused for one. A stopped domain has neither."""
    try:
        state, reason = (int(v) for v in dom.state()[:2])
        if state == libvirt.VIR_DOMAIN_SHUTOFF:
            return False
        job = int(dom.jobInfo()[0])
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise NotFound(str(exc)) from None
        if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
            return False  # "domain is not running": stopped between the two calls
        raise translate(exc) from None
    if job in (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED):
        return True
    return state == libvirt.VIR_DOMAIN_PAUSED and reason in _WORKING
