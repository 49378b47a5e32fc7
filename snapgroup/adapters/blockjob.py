"""Waiting on a disk's block job (a commit): polling it to the end, pivoting an active
commit once ready, then waiting for the domain XML to show the result. Written against
JobControl, which libvirt_hv/blockjobs.py implements on one libvirt domain (this module
does not import libvirt)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from snapgroup.domain.errors import HypervisorError, Timeout
from snapgroup.domain.models import BlockJobProgress, DomainDisk
from snapgroup.ports import ProgressFn

log = logging.getLogger(__name__)


class Progress:
    """Calls the caller's callback on each change; a failing callback is logged and
    dropped, because aborting a half-done commit over a display bug would be worse."""

    def __init__(self, callback: ProgressFn | None) -> None:
        self._callback = callback
        self.last: BlockJobProgress | None = None

    def report(self, cur: int, end: int) -> None:
        update = BlockJobProgress(cur=cur, end=end)
        if update == self.last:
            return
        self.last = update
        if self._callback is None:
            return
        try:
            self._callback(update)
        except Exception:
            log.warning("progress callback failed; no more progress is reported", exc_info=True)
            self._callback = None

    def finish(self) -> None:
        if self.last is not None and self.last.cur != self.last.end:
            self.report(self.last.end, self.last.end)


class JobControl(Protocol):
    """One domain's block jobs, as the hypervisor adapter sees them."""

    def job(self, target: str) -> dict[str, int]:
        """The job on `target` (type, cur, end), empty when there is none."""
        ...

    def try_pivot(self, target: str) -> bool:
        """Pivot a ready active commit; False when the hypervisor says not ready yet."""
        ...

    def abort(self, target: str) -> None: ...

    def disk(self, target: str) -> DomainDisk:
        """The disk as the live domain XML shows it now."""
        ...


@dataclass
class JobWait:
    control: JobControl
    poll_interval: float
    job_timeout: float | None
    settle_timeout: float

    def pivot_when_ready(self, target: str, meter: Progress) -> None:
        deadline = self._deadline()
        while True:
            job = self.control.job(target)
            if not job:
                raise HypervisorError(
                    f"the active block commit on disk {target} ended before it could pivot "
                    "(failed or cancelled; see libvirtd's log)"
                )
            cur, end = job["cur"], job["end"]
            meter.report(cur, end)
            # libvirt reports cur == end only once QEMU says the job is ready (it adds 1
            # to end until then). A pivot refused as "not ready" is still retried.
            if end > 0 and cur == end and self.control.try_pivot(target):
                return
            self._check_deadline(deadline, target)
            time.sleep(self.poll_interval)

    def wait_gone(self, target: str, meter: Progress) -> None:
        deadline = self._deadline()
        while job := self.control.job(target):
            meter.report(job["cur"], job["end"])
            self._check_deadline(deadline, target)
            time.sleep(self.poll_interval)

    def settle(self, target: str, done: Callable[[DomainDisk], bool], failure: str) -> None:
        """Wait (briefly) until the live XML of `target` satisfies `done`."""
        deadline = time.monotonic() + self.settle_timeout
        while True:
            if done(self.control.disk(target)):
                return
            if time.monotonic() >= deadline:
                raise HypervisorError(failure)
            time.sleep(self.poll_interval)

    def _deadline(self) -> float | None:
        return None if self.job_timeout is None else time.monotonic() + self.job_timeout

    def _check_deadline(self, deadline: float | None, target: str) -> None:
        if deadline is None or time.monotonic() < deadline:
            return
        # Cancelling a commit leaves top in the chain, so the guest's view is intact.
        self.control.abort(target)
        raise Timeout(f"block commit on disk {target} took longer than {self.job_timeout}s")
