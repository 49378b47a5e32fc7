"""Block-job verbs: a commit started and waited on (blockjob.JobWait does the waiting,
over _DomainJobs), and a job an interrupted process left behind, finished."""

from __future__ import annotations

import logging
from typing import Any

import libvirt

from snapgroup.adapters.blockjob import JobWait, Progress
from snapgroup.adapters.domxml import active_commit_base
from snapgroup.adapters.libvirt_hv.connection import LibvirtConnection
from snapgroup.adapters.libvirt_hv.errors import translate
from snapgroup.domain.errors import HypervisorError, InvalidArgument, NotFound
from snapgroup.domain.models import BlockJobProgress, DomainDisk, DomainInfo, VmState
from snapgroup.ports import ProgressFn

log = logging.getLogger(__name__)


class BlockJobs(LibvirtConnection):
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

    def block_pull(self, vm_uuid: str, target: str, *, bandwidth: int | None = None) -> None:
        dom = self._domain(vm_uuid)
        self._live_disk(dom, target, "a block pull")
        with self._calls():
            dom.blockPull(target, bandwidth or 0, 0)  # MiB/s (0: no cap); the whole chain

    def block_job(self, vm_uuid: str, target: str) -> BlockJobProgress | None:
        dom = self._domain(vm_uuid)
        if not self._info(dom).state.is_live:
            return None
        job = _DomainJobs(self, dom).job(target)
        return BlockJobProgress(job["cur"], job["end"]) if job else None

    def cancel_block_job(self, vm_uuid: str, target: str) -> None:
        dom = self._domain(vm_uuid)
        if not self._info(dom).state.is_live:
            return
        jobs = _DomainJobs(self, dom)
        if not jobs.job(target):
            return
        try:
            jobs.abort(target)  # synchronous: the job is gone when it returns
        except HypervisorError:
            if jobs.job(target):  # not one that ended meanwhile
                raise

    def pause(self, vm_uuid: str) -> None:
        dom = self._domain(vm_uuid)
        with self._calls():
            state = int(dom.state()[0])
            if state == libvirt.VIR_DOMAIN_RUNNING:
                dom.suspend()
            elif state != libvirt.VIR_DOMAIN_PAUSED:
                raise HypervisorError(f"domain {dom.name()} is not running (state {state})")

    def flush_disks(self, vm_uuid: str) -> None:
        dom = self._domain(vm_uuid)
        if self._info(dom).state is not VmState.RUNNING:
            return  # stopped: nothing cached; paused: flushed when it was paused
        with self._calls():
            dom.suspend()  # QEMU's vm_stop drains and flushes every block device
            dom.resume()

    def _jobs(self, dom: Any) -> JobWait:
        return JobWait(
            _DomainJobs(self, dom), self.poll_interval, self.job_timeout, self.settle_timeout
        )

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


class _DomainJobs:
    """blockjob.JobControl on one libvirt domain."""

    def __init__(self, hv: BlockJobs, dom: Any) -> None:
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
            raise translate(exc) from None
        return True

    def abort(self, target: str) -> None:
        with self.hv._calls():
            self.dom.blockJobAbort(target, 0)

    def disk(self, target: str) -> DomainDisk:
        return self.hv._live_disk(self.dom, target, "a block commit")[1]
