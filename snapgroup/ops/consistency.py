"""Application consistency: freeze the guest's filesystems through its agent around the
one switch call of a create, and thaw them again in every path.

    window = FreezeWindow(hv, domain, Consistency.AUTO, timeout=10, on_freezing=journal)
    with window:
        switch()                      # the ONE libvirt snapshot call
    window.record                     # what the group records (type, mountpoints, ms, note)

Modes (`snapgroup create --consistency`):
  application  freeze or fail: no agent, no answer in time, a failed freeze, a paused or
               stopped VM all fail the create before the switch (nothing changes).
  auto         application when the freeze works, else crash-consistent, and the note
               says why.
  crash        no freeze.

Only a freeze snapgroup itself did earns "Application". A stopped VM's disks are at rest,
but snapgroup cannot tell a clean guest shutdown from a power-off (whose filesystems need
journal recovery), so it is recorded as "Crash" with a note saying so, and `application`
refuses it. The freeze window holds only the switch call: overlays are made before it and
the probe of the agent (guest-get-fsinfo, which also names the mountpoints) comes first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any

from snapgroup.domain.errors import InvalidArgument, OperationError, SnapgroupError
from snapgroup.domain.models import DomainInfo, VmState
from snapgroup.ports import Hypervisor

log = logging.getLogger(__name__)

FREEZE_TIMEOUT_S = 10  # per agent request (probe, freeze, each thaw attempt)
THAW_ATTEMPTS = 3
THAW_BACKOFF_S = (0.25, 1.0)  # pauses between thaw attempts


class Consistency(StrEnum):
    """What the caller asks for."""

    APPLICATION = "application"
    CRASH = "crash"
    AUTO = "auto"

    @classmethod
    def parse(cls, value: str | Consistency) -> Consistency:
        for mode in cls:
            if value == mode or str(value).lower() == mode.value:
                return mode
        raise InvalidArgument(f"consistency {value!r} is not application, crash or auto")


class ConsistencyType(StrEnum):
    """What a group is (its inventory's consistencyType)."""

    APPLICATION = "Application"
    CRASH = "Crash"


@dataclass(frozen=True)
class ConsistencyRecord:
    type: ConsistencyType
    frozen_filesystems: tuple[str, ...] = ()
    freeze_millis: int | None = None  # freeze request sent -> thaw answered
    note: str | None = None  # why it is not Application, or what went wrong around it

    def to_plan(self) -> dict[str, Any]:
        """JSON for the journal (recovery records the group from it)."""
        return {
            "type": self.type.value,
            "frozen_filesystems": list(self.frozen_filesystems),
            "freeze_millis": self.freeze_millis,
            "note": self.note,
        }

    @classmethod
    def from_plan(cls, data: dict[str, Any]) -> ConsistencyRecord:
        return cls(
            type=ConsistencyType(data["type"]),
            frozen_filesystems=tuple(data.get("frozen_filesystems") or ()),
            freeze_millis=data.get("freeze_millis"),
            note=data.get("note"),
        )


def thaw_with_retries(
    hv: Hypervisor,
    vm_uuid: str,
    *,
    timeout: int,
    attempts: int = THAW_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[int, SnapgroupError | None]:
    """Thaw, retrying: (filesystems thawed, None) or (0, the last error). A guest left
    frozen blocks every write in it, so a failure is logged as an error here and the
    caller must report it too."""
    error: SnapgroupError | None = None
    for attempt in range(attempts):
        if attempt:
            sleep(THAW_BACKOFF_S[min(attempt - 1, len(THAW_BACKOFF_S) - 1)])
        try:
            return hv.thaw(vm_uuid, timeout=timeout), None
        except SnapgroupError as exc:
            error = exc
            log.warning(
                "thaw of VM %s failed (attempt %d/%d): %s",
                vm_uuid,
                attempt + 1,
                attempts,
                exc.details,
            )
    assert error is not None
    log.error(
        "VM %s: its filesystems could not be thawed after %d attempts (%s); the guest may "
        "still be frozen: run `virsh domfsthaw` on it",
        vm_uuid,
        attempts,
        error.details,
    )
    return 0, error


def thaw_report(thawed: int, error: SnapgroupError | None) -> str:
    """What a thaw after an interrupted create found, for notes and journal details."""
    if error is not None:
        return f"thawing failed ({error.details}): the guest may still be frozen"
    return f"thawed {thawed} filesystem(s) left frozen"


def interrupted_record(
    *, froze: bool, thawed: int = 0, thaw_error: SnapgroupError | None = None
) -> ConsistencyRecord:
    """What recovery records for a group whose create was killed before its consistency
    was journaled: never Application, since the freeze cannot be proven to have held."""
    if not froze:
        return ConsistencyRecord(
            ConsistencyType.CRASH, note="recovered after an interrupted create: no freeze"
        )
    return ConsistencyRecord(
        ConsistencyType.CRASH,
        note=(
            "recovered after a create interrupted inside the freeze window, so application "
            f"consistency is not proven; {thaw_report(thawed, thaw_error)}"
        ),
    )


def known_record(mode: Consistency) -> ConsistencyRecord | None:
    """What a create in `mode` records when that is known before its window (crash asks
    no agent): journaled with its plan, before the switch. None: the window decides."""
    return ConsistencyRecord(ConsistencyType.CRASH) if mode is Consistency.CRASH else None


class FreezeWindow:
    """A context manager around the switch; see the module's docstring.

    Entering probes the agent and freezes (or decides not to: `record` says why). In
    application mode a refusal raises OperationError from `__enter__`, before anything
    is switched, and leaves it in `refused`. Leaving always thaws what was (or may have
    been) frozen. A thaw that keeps failing: when the switch succeeded the group is
    still good, so it goes into the record's note (and the log); when the switch failed
    too, the error raised says both.
    """

    def __init__(
        self,
        hv: Hypervisor,
        domain: DomainInfo,
        mode: Consistency,
        *,
        timeout: int = FREEZE_TIMEOUT_S,
        on_freezing: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.hv = hv
        self.domain = domain
        self.mode = mode
        self.timeout = timeout
        self.on_freezing = on_freezing  # journal "freezing" before the guest is touched
        self.clock = clock
        self.sleep = sleep
        self.record: ConsistencyRecord | None = None
        self.refused: OperationError | None = None
        self.froze = False  # a freeze was requested: thaw on the way out
        self.thaw_error: SnapgroupError | None = None
        self._mounts: tuple[str, ...] = ()
        self._started = 0.0
        self._fallback: str | None = None  # the note of a freeze that failed in auto

    # -- entering -----------------------------------------------------------------------
    def __enter__(self) -> FreezeWindow:
        self.record = known_record(self.mode)
        if self.record is not None:
            return self
        reason = self._why_not_possible()
        if reason is None:
            reason = self._probe()
        if reason is None:
            reason = self._freeze()
        if reason is not None:
            self._fall_back(reason)
        return self

    def _why_not_possible(self) -> str | None:
        state = self.domain.state
        if state is VmState.STOPPED:
            return (
                "VM stopped: its disks are at rest and were not frozen; they hold what the "
                "guest's last shutdown left (application-consistent only if it was clean)"
            )
        if state is VmState.PAUSED:
            return "VM paused: its guest agent cannot run, so its filesystems were not frozen"
        return None

    def _probe(self) -> str | None:
        """guest-get-fsinfo: is there an agent that answers, and what will it freeze?"""
        try:
            self._mounts = self.hv.guest_filesystems(self.domain.uuid, timeout=self.timeout)
        except SnapgroupError as exc:
            return f"guest agent unavailable ({exc.details})"
        if not self._mounts:
            return "the guest agent reports no filesystem to freeze"
        return None

    def _freeze(self) -> str | None:
        self.on_freezing()
        self.froze = True  # from here on, the guest may be frozen: always thaw
        self._started = self.clock()
        try:
            result = self.hv.freeze(self.domain.uuid, timeout=self.timeout)
        except SnapgroupError as exc:
            # A freeze that timed out may still complete in the guest later; one that
            # failed halfway may leave some filesystems frozen. Thaw either way.
            self._thaw()
            self.froze = False
            why = f"freeze failed ({exc.details})"
            if self.thaw_error is not None:
                why += f"; thawing after it failed too ({self.thaw_error.details})"
            return why
        except BaseException:
            self._thaw()  # __exit__ never runs when __enter__ raises
            raise
        if result.count != len(self._mounts):
            log.warning(
                "VM %s: the agent froze %d filesystems, it listed %d (%s)",
                self.domain.uuid,
                result.count,
                len(self._mounts),
                ", ".join(self._mounts),
            )
        return None

    def _fall_back(self, reason: str) -> None:
        if self.mode is Consistency.APPLICATION:
            self.refused = OperationError(
                f"VM {self.domain.name}: no application-consistent snapshot: {reason}; "
                "nothing was changed (--consistency auto falls back to crash-consistent)"
            )
            raise self.refused
        self._fallback = f"crash-consistent fallback: {reason}"
        self.record = ConsistencyRecord(ConsistencyType.CRASH, note=self._fallback)

    # -- leaving ------------------------------------------------------------------------
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.froze:
            return
        self._thaw()
        millis = round((self.clock() - self._started) * 1000)
        note = None
        if self.thaw_error is not None:
            note = (
                f"THAW FAILED after {THAW_ATTEMPTS} attempts ({self.thaw_error.details}): "
                f"the guest may still be frozen; run `virsh domfsthaw {self.domain.name}`"
            )
        self.record = ConsistencyRecord(ConsistencyType.APPLICATION, self._mounts, millis, note)
        if self.thaw_error is not None and isinstance(exc, SnapgroupError):
            raise OperationError(
                f"{exc.details}; and the guest's filesystems could not be thawed "
                f"({self.thaw_error.details}): run `virsh domfsthaw {self.domain.name}`",
                cause=exc,
            ) from exc

    def _thaw(self) -> None:
        _count, self.thaw_error = thaw_with_retries(
            self.hv, self.domain.uuid, timeout=self.timeout, sleep=self.sleep
        )
