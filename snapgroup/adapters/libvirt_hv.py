"""snapgroup.ports.Hypervisor on libvirt. The only module that imports libvirt.

Behaviour checked against libvirt 9.0 / QEMU 7.2 (blockdev mode):

* A live external snapshot (and a block commit) updates the persistent definition too:
  its <source> becomes the overlay and a <backingStore> chain is written into it.
  libvirt honours that stored chain over the image header at the next start.
* With REUSE_EXT neither libvirt nor QEMU checks or rewrites the overlay's backing link:
  QEMU stacks the overlay on the current top whatever its header says.
* Under DAC dynamic_ownership libvirt chowns each file it hands QEMU to libvirt-qemu
  (mode kept, so a root 0600 overlay works) and restores the owner when QEMU lets go.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import libvirt

from snapgroup.adapters.blockjob import JobWait, Progress
from snapgroup.adapters.domxml import (
    active_commit_base,
    clone_xml,
    normalize_uuid,
    parse_domain,
    restore_xml,
    snapshot_xml,
    with_disk_sources,
)
from snapgroup.domain.errors import (
    HypervisorError,
    HypervisorUnavailable,
    InvalidArgument,
    NotFound,
    SnapgroupError,
)
from snapgroup.domain.models import DiskOverlay, DomainDisk, DomainInfo, FreezeResult, VmState
from snapgroup.ports import ProgressFn

log = logging.getLogger(__name__)

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    # Xen's "blocked on a resource": the guest is up and QEMU owns the disks.
    libvirt.VIR_DOMAIN_BLOCKED: VmState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: VmState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.STOPPED,
}

# Failures to reach libvirtd at all, as opposed to libvirtd refusing a request.
_UNAVAILABLE_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_CANCELLED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    }
)

_SNAPSHOT_FLAGS = (
    libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
)
# SECURE keeps passwords (VNC, SPICE) in the dump; without it a redefinition drops them.
_DEFINE_SOURCE_FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; we raise them instead."""


def _translate(exc: libvirt.libvirtError, *, opening: bool = False) -> SnapgroupError:
    """THE mapping from a libvirt error to the port's error family."""
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NotFound(message)
    # Any failure of open() means no hypervisor; later, errors raised by the RPC layer
    # itself (socket closed, connection reset) mean libvirtd went away under us.
    if opening or code in _UNAVAILABLE_CODES or exc.get_error_domain() == libvirt.VIR_FROM_RPC:
        return HypervisorUnavailable(message)
    return HypervisorError(message)


def _dashed(vm_uuid: str) -> str:
    try:
        compact = normalize_uuid(vm_uuid)
    except InvalidArgument:
        raise NotFound(f"no domain with UUID {vm_uuid!r} (not a UUID)") from None
    return "-".join((compact[:8], compact[8:12], compact[12:16], compact[16:20], compact[20:]))


class LibvirtHypervisor:
    """Hypervisor port on libvirt. Connects on first use; safe to share across threads.

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

    # -- connection and errors -------------------------------------------------------

    def _connection(self) -> Any:
        with self._lock:
            if self._conn is None:
                libvirt.registerErrorHandler(_quiet, None)
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as exc:
                    raise _translate(exc, opening=True) from None
            return self._conn

    @contextlib.contextmanager
    def _calls(self) -> Iterator[None]:
        """Wraps every libvirt call: translates its errors, forgets a dead connection
        so the next call reconnects."""
        try:
            yield
        except libvirt.libvirtError as exc:
            error = _translate(exc)
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

    def __enter__(self) -> LibvirtHypervisor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------

    def _domain(self, vm_uuid: str) -> Any:
        dashed = _dashed(vm_uuid)
        conn = self._connection()
        with self._calls():
            return conn.lookupByUUIDString(dashed)

    def _info(self, dom: Any) -> DomainInfo:
        with self._calls():
            raw_state = int(dom.state()[0])
            state = _STATES.get(raw_state, VmState.OTHER)
            # A live domain's XML carries the runtime backing chains; a stopped one's
            # is the persistent definition (what the next start will use).
            xml = str(dom.XMLDesc(0 if state.is_live else libvirt.VIR_DOMAIN_XML_INACTIVE))
            persistent = bool(dom.isPersistent())
        return parse_domain(xml, state, persistent=persistent)

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

    def _live_disk(self, dom: Any, target: str, doing: str) -> tuple[DomainInfo, DomainDisk]:
        info = self._info(dom)
        if not info.state.is_live:
            raise HypervisorError(
                f"{doing} needs a running or paused domain; {info.name} is {info.state.value}"
            )
        for disk in info.disks:
            if disk.target == target:
                return info, disk
        raise NotFound(f"domain {info.name} has no disk {target}")

    # -- snapshot and redefinition ---------------------------------------------------

    def snapshot_disks(
        self, vm_uuid: str, overlays: Sequence[DiskOverlay], *, quiesce: bool = False
    ) -> None:
        dom = self._domain(vm_uuid)
        info = self._info(dom)
        if not info.state.is_live:
            raise HypervisorError(
                f"a live snapshot needs a running or paused domain; "
                f"{info.name} is {info.state.value}"
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
        xml = snapshot_xml(overlays, [disk.target for disk in info.disks])
        flags = _SNAPSHOT_FLAGS
        if quiesce:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        with self._calls():
            dom.snapshotCreateXML(xml, flags)

    def set_disk_sources(self, vm_uuid: str, sources: dict[str, str]) -> None:
        dom = self._domain(vm_uuid)
        with self._calls():
            active = bool(dom.isActive())
            name = str(dom.name())
            xml = str(dom.XMLDesc(_DEFINE_SOURCE_FLAGS))
        if active:
            # Redefining a running domain only changes its next boot, while QEMU keeps
            # writing the old files: the two would disagree.
            raise HypervisorError(f"domain {name} is running; stop it before redefining disks")
        new_xml = with_disk_sources(xml, sources)
        conn = self._connection()
        with self._calls():
            conn.defineXML(new_xml)
        defined = {disk.target: disk.path for disk in self._info(dom).disks}
        wrong = {t: p for t, p in sources.items() if defined.get(t) != p}
        if wrong:
            raise HypervisorError(f"domain {name}: libvirt did not keep the new sources {wrong}")

    # -- block commit ----------------------------------------------------------------

    def block_commit(
        self,
        vm_uuid: str,
        target: str,
        *,
        top: str | None,
        base: str,
        progress: ProgressFn | None = None,
    ) -> None:
        dom = self._domain(vm_uuid)
        _info, disk = self._live_disk(dom, target, "a block commit")
        if top == disk.path:
            top = None  # committing the active layer, whichever way it was named
        chain = (disk.path, *disk.backing)
        if top is None:
            if base not in disk.backing:
                raise InvalidArgument(f"disk {target}: {base} is not below the top; chain {chain}")
        elif top not in disk.backing or base not in chain[chain.index(top) + 1 :]:
            raise InvalidArgument(f"disk {target}: {base} is not below {top} in the chain {chain}")

        # A job already on the disk (an interrupted caller's) makes libvirt refuse this
        # one: settle_block_job() is the way to finish it.
        flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE if top is None else 0
        with self._calls():
            dom.blockCommit(target, base, top, 0, flags)
        meter = Progress(progress)
        jobs = self._jobs(dom)
        if top is None:
            jobs.pivot_when_ready(target, meter)
            jobs.settle(
                target,
                lambda d: d.path == base,
                f"disk {target} is not on {base} after the pivot",
            )
        else:
            jobs.wait_gone(target, meter)
            # The job also disappears when it fails or is cancelled; only the chain
            # tells whether `top` was really merged away.
            jobs.settle(
                target,
                lambda d: top not in (d.path, *d.backing),
                f"block commit of {top} into {base} on disk {target} did not complete "
                f"(the job ended but {top} is still in the chain; see libvirtd's log)",
            )
        meter.finish()

    def settle_block_job(self, vm_uuid: str, target: str) -> None:
        """Finish the commit an interrupted process left on `target`: wait for an
        intermediate commit (or a pull) to end; pivot an active commit once ready.
        Nothing to do without a job. Jobs snapgroup never starts (copy, backup) are
        refused: finishing or cancelling them is their owner's decision."""
        dom = self._domain(vm_uuid)
        info = self._info(dom)
        if not info.state.is_live:
            return  # no QEMU, no job
        if target not in {d.target for d in info.disks}:
            raise NotFound(f"domain {info.name} has no disk {target}")
        jobs = self._jobs(dom)
        job = jobs.control.job(target)
        if not job:
            return
        kind = job["type"]
        meter = Progress(None)
        if kind == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT:
            with self._calls():
                base = active_commit_base(str(dom.XMLDesc(0)), target)
            log.info("disk %s: pivoting an active commit left running into %s", target, base)
            jobs.pivot_when_ready(target, meter)
            if base is not None:
                jobs.settle(
                    target,
                    lambda d: d.path == base,
                    f"disk {target} is not on {base} after the pivot",
                )
        elif kind in (
            libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT,
            libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL,
        ):
            log.info("disk %s: waiting for a block job left running (type %d)", target, kind)
            jobs.wait_gone(target, meter)
        else:
            raise HypervisorError(
                f"disk {target} has a block job of type {kind} that snapgroup did not start"
            )

    def _jobs(self, dom: Any) -> JobWait:
        return JobWait(
            _DomainJobs(self, dom), self.poll_interval, self.job_timeout, self.settle_timeout
        )

    # -- life cycle (revert --stop, clone) -------------------------------------------

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

    def define_clone(
        self, vm_uuid: str, *, name: str, new_uuid: str, sources: dict[str, str]
    ) -> DomainInfo:
        xml = self.definition_xml(vm_uuid)
        return self._define_new(
            clone_xml(xml, name=name, uuid=new_uuid, sources=sources), name, new_uuid
        )

    def definition_xml(self, vm_uuid: str) -> str:
        dom = self._domain(vm_uuid)
        with self._calls():
            return str(dom.XMLDesc(_DEFINE_SOURCE_FLAGS))

    def define_restored(
        self, xml: str, *, name: str, new_uuid: str, sources: dict[str, str]
    ) -> DomainInfo:
        return self._define_new(
            restore_xml(xml, name=name, uuid=new_uuid, sources=sources), name, new_uuid
        )

    def _define_new(self, xml: str, name: str, new_uuid: str) -> DomainInfo:
        """Define a new domain, once none has `name` or `new_uuid`: defineXML would
        silently REdefine an existing domain of that name and UUID."""
        conn = self._connection()
        for taken in (name, _dashed(new_uuid)):
            try:
                with self._calls():
                    (conn.lookupByName if taken == name else conn.lookupByUUIDString)(taken)
            except NotFound:
                continue
            raise InvalidArgument(f"a domain {taken} already exists")
        with self._calls():
            made = conn.defineXML(xml)
        return self._info(made)

    def list_vms(self) -> list[tuple[str, str]]:
        conn = self._connection()
        with self._calls():
            return [(d.UUIDString().replace("-", ""), d.name()) for d in conn.listAllDomains(0)]

    def undefine(self, vm_uuid: str) -> None:
        dom = self._domain(vm_uuid)
        with self._calls():
            if dom.isActive():
                raise HypervisorError(f"domain {dom.name()} is running; not undefined")
            dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            )

    # -- guest agent (consistency work) ----------------------------------------------

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


class _DomainJobs:
    """blockjob.JobControl on one libvirt domain."""

    def __init__(self, hv: LibvirtHypervisor, dom: Any) -> None:
        self.hv, self.dom = hv, dom

    def job(self, target: str) -> dict[str, int]:
        with self.hv._calls():
            info = self.dom.blockJobInfo(target, 0)
        return {key: int(value) for key, value in (info or {}).items()}

    def try_pivot(self, target: str) -> bool:
        try:
            # Synchronous without VIR_DOMAIN_BLOCK_JOB_ABORT_ASYNC: returns after the
            # switch to the base.
            self.dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_BLOCK_COPY_ACTIVE:
                return False
            raise _translate(exc) from None
        return True

    def abort(self, target: str) -> None:
        with self.hv._calls():
            self.dom.blockJobAbort(target, 0)

    def disk(self, target: str) -> DomainDisk:
        return self.hv._live_disk(self.dom, target, "a block commit")[1]
