"""Guest-agent verbs (application consistency): the guest's filesystems listed, frozen,
thawed; its clock set (after a memory state is resumed). Each request bounded by a
timeout."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import libvirt

from snapgroup.adapters.libvirt_hv.connection import LibvirtConnection
from snapgroup.domain.models import FreezeResult


class GuestAgent(LibvirtConnection):
    def _agent_call(self, vm_uuid: str, timeout: int | None, call: Callable[[Any], Any]) -> Any:
        """One guest-agent request through libvirt. libvirt's own default is to wait for
        the agent forever: `timeout` (seconds) bounds it, and is reset afterwards."""
        dom = self._domain(vm_uuid)
        with self._calls():
            if timeout is None:
                return call(dom)
            dom.agentSetResponseTimeout(timeout, 0)
            try:
                return call(dom)
            finally:
                dom.agentSetResponseTimeout(libvirt.VIR_DOMAIN_AGENT_RESPONSE_TIMEOUT_DEFAULT, 0)

    def guest_filesystems(self, vm_uuid: str, *, timeout: int | None = None) -> tuple[str, ...]:
        """Mountpoints of the guest's filesystems (virDomainGetFSInfo: guest-get-fsinfo),
        the same list the agent's fsfreeze walks."""
        info = self._agent_call(vm_uuid, timeout, lambda dom: dom.fsInfo(0))
        return tuple(str(entry[0]) for entry in info or ())

    def freeze(self, vm_uuid: str, *, timeout: int | None = None) -> FreezeResult:
        """fsfreeze every guest filesystem through the guest agent (virDomainFSFreeze with
        no mountpoints: all of them)."""
        count = self._agent_call(vm_uuid, timeout, lambda dom: dom.fsFreeze(None, 0))
        return FreezeResult(count=int(count))

    def thaw(self, vm_uuid: str, *, timeout: int | None = None) -> int:
        """Thaw every frozen guest filesystem; returns how many were thawed (0 when none
        was frozen: thawing is always safe)."""
        return int(self._agent_call(vm_uuid, timeout, lambda dom: dom.fsThaw(None, 0)))

    def set_guest_time(self, vm_uuid: str, *, timeout: int | None = None) -> None:
        """guest-set-time to the host's now (virDomainSetTime with a time: the guest
        does not have to trust its own RTC). Just after a restore libvirt may not see
        the agent connected yet: that is waited for, up to `timeout` seconds (10)."""
        deadline = time.monotonic() + (timeout if timeout is not None else 10)

        def set_time(dom: Any) -> bool:
            now = time.time_ns()
            moment = {"seconds": now // 1_000_000_000, "nseconds": now % 1_000_000_000}
            try:
                dom.setTime(moment, 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
                    raise
                if time.monotonic() >= deadline:
                    raise
                return False
            return True

        while not self._agent_call(vm_uuid, timeout, set_time):
            time.sleep(self.poll_interval)
