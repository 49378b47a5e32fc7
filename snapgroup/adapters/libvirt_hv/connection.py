"""The connection every verb shares: opened on first use, forgotten when libvirtd goes
away (the next call reconnects), each call's errors translated (errors.py); a domain
looked up and read (lookup: the port's read)."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any, Self

import libvirt

from snapgroup.adapters.domxml import normalize_uuid, parse_domain
from snapgroup.adapters.libvirt_hv.errors import quiet, translate
from snapgroup.domain.errors import HypervisorUnavailable, InvalidArgument, NotFound
from snapgroup.domain.models import DomainInfo, VmState

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    # Xen's "blocked on a resource": the guest is up and QEMU owns the disks.
    libvirt.VIR_DOMAIN_BLOCKED: VmState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: VmState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.STOPPED,
}

# The persistent definition, as a redefinition starts from it. SECURE keeps passwords
# (VNC, SPICE) in the dump; without it a redefinition drops them.
DEFINITION_FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE


def dashed(vm_uuid: str) -> str:
    """A VM's UUID as libvirt looks it up (8-4-4-4-12); NotFound when it is no UUID."""
    try:
        compact = normalize_uuid(vm_uuid)
    except InvalidArgument:
        raise NotFound(f"no domain with UUID {vm_uuid!r} (not a UUID)") from None
    return "-".join((compact[:8], compact[8:12], compact[12:16], compact[16:20], compact[20:]))


@functools.lru_cache(maxsize=64)
def parsed_domain(xml: str, state: VmState, persistent: bool) -> DomainInfo:
    """parse_domain, remembered: an operation reads the same XML several times (the VM
    named, again under its lock, again by the switch's own check), ~0.2 ms a parse of
    16 disks here. A DomainInfo is frozen (its disks too): sharing one is safe."""
    return parse_domain(xml, state, persistent=persistent)


class LibvirtConnection:
    """One libvirt connection, safe to share across threads; the base of every verb.

    `poll_interval`: seconds between block-job polls. `job_timeout`: give up (abort the
    job, raise Timeout) after this many seconds; None waits as long as the data needs.
    `settle_timeout`: how long libvirt may take to show a finished job in the XML.
    """

    def __init__(
        self,
        uri: str | None = None,
        *,
        poll_interval: float = 0.1,
        job_timeout: float | None = None,
        settle_timeout: float = 10.0,
    ) -> None:
        self.uri = uri
        self.poll_interval = poll_interval
        self.job_timeout = job_timeout
        self.settle_timeout = settle_timeout
        self._conn: Any = None
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        with self._lock:
            if self._conn is None:
                libvirt.registerErrorHandler(quiet, None)
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as exc:
                    raise translate(exc, opening=True) from None
            return self._conn

    @contextlib.contextmanager
    def _calls(self) -> Iterator[None]:
        """Wraps every libvirt call: translates its errors, forgets a dead connection
        so the next call reconnects."""
        try:
            yield
        except libvirt.libvirtError as exc:
            error = translate(exc)
            if isinstance(error, HypervisorUnavailable):
                self._drop_connection()
            raise error from None

    def _drop_connection(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            # Already dead, most likely: there is nothing left to release.
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def close(self) -> None:
        self._drop_connection()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------

    def _domain(self, vm_uuid: str) -> Any:
        uuid = dashed(vm_uuid)
        conn = self._connection()
        with self._calls():
            return conn.lookupByUUIDString(uuid)

    def _info(self, dom: Any) -> DomainInfo:
        with self._calls():
            raw_state = int(dom.state()[0])
            state = _STATES.get(raw_state, VmState.OTHER)
            # A live domain's XML carries the runtime backing chains; a stopped one's
            # is the persistent definition (what the next start will use).
            xml = str(dom.XMLDesc(0 if state.is_live else libvirt.VIR_DOMAIN_XML_INACTIVE))
            persistent = bool(dom.isPersistent())
        return parsed_domain(xml, state, persistent)

    def lookup(self, vm: str) -> DomainInfo:
        # A read is always safe to repeat: after a libvirtd restart the first call on
        # the old connection fails, the retry reconnects.
        try:
            return self._lookup(vm)
        except HypervisorUnavailable:
            return self._lookup(vm)

    def _lookup(self, vm: str) -> DomainInfo:
        conn = self._connection()
        try:
            with self._calls():
                dom = conn.lookupByName(vm)
        except NotFound:
            try:
                normalize_uuid(vm)
            except InvalidArgument:
                raise NotFound(f"no domain named {vm!r}") from None
            dom = self._domain(vm)
        return self._info(dom)
