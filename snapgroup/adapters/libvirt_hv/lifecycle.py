"""Life-cycle verbs: a domain started, a domain shut down (ACPI, then powered off)."""

from __future__ import annotations

import logging
import time

from snapgroup.adapters.libvirt_hv.connection import LibvirtConnection
from snapgroup.domain.errors import HypervisorError

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
