"""The ownership rules (domain/ownership.py): mine, take over, or refuse, from the VM's
owners in the store, its state in this host's libvirt and the owner's lease."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from snapgroup.domain.models import VmState
from snapgroup.domain.ownership import Decision, HostLease, Verdict, decide

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
VM = "a" * 32
LIVE, EXPIRED = NOW + timedelta(seconds=30), NOW - timedelta(seconds=1)


def _lease(expires: datetime, running: set[str] | None = None) -> HostLease:
    frozen = None if running is None else frozenset(running)
    return HostLease("hosta", expires, expires - timedelta(seconds=60), frozen)


def _decide(
    *,
    owners: set[str] | None = None,
    state: VmState | None = VmState.RUNNING,
    lease: HostLease | None = None,
    same_disks: bool = True,
) -> Decision:
    return decide(
        vm_uuid=VM,
        vm_name="web1",
        here="hostb",
        owners={"hosta"} if owners is None else owners,
        state_here=state,
        lease=lease,
        same_disks=same_disks,
        now=NOW,
    )


@pytest.mark.parametrize("owners", [set(), {"hostb"}])
def test_a_vm_no_other_host_owns_is_mine(owners: set[str]) -> None:
    assert _decide(owners=owners, state=None).verdict is Verdict.MINE


@pytest.mark.parametrize("state", [VmState.RUNNING, VmState.PAUSED, VmState.STOPPED])
def test_a_live_owner_that_reports_it_not_running_hands_it_over(state: VmState) -> None:
    decision = _decide(state=state, lease=_lease(LIVE, {"b" * 32}))
    assert decision.verdict is Verdict.TAKE_OVER and decision.owner == "hosta"
    assert "host hosta reports it not running" in decision.reason


def test_a_vm_running_on_a_live_owner_and_here_is_running_on_two_hosts() -> None:
    decision = _decide(lease=_lease(LIVE, {VM}))
    assert decision.verdict is Verdict.REFUSE
    assert decision.reason.startswith("VM web1 (" + VM + ") is running on two hosts, hosta")
    assert "this one (hostb)" in decision.reason and "migration in flight" in decision.reason


def test_a_vm_running_on_a_live_owner_and_stopped_here_stays_there() -> None:
    decision = _decide(state=VmState.STOPPED, lease=_lease(LIVE, {VM}))
    assert decision.verdict is Verdict.REFUSE
    assert "belongs to host hosta, not to this host (hostb): it runs there" in decision.reason


@pytest.mark.parametrize("state", [VmState.RUNNING, VmState.STOPPED, VmState.OTHER])
def test_an_expired_owner_that_did_not_run_it_loses_it(state: VmState) -> None:
    decision = _decide(state=state, lease=_lease(EXPIRED, set()))
    assert decision.verdict is Verdict.TAKE_OVER
    assert "host hosta's lease expired at 2026-12-05T11:59:59+00:00" in decision.reason


def test_an_expired_owner_that_ran_it_loses_it_to_a_host_that_runs_it() -> None:
    assert _decide(lease=_lease(EXPIRED, {VM})).verdict is Verdict.TAKE_OVER


def test_an_expired_owner_that_ran_it_keeps_it_from_a_host_where_it_is_stopped() -> None:
    decision = _decide(state=VmState.STOPPED, lease=_lease(EXPIRED, {VM}))
    assert decision.verdict is Verdict.REFUSE
    assert "start the VM here to take it over" in decision.reason


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"state": None}, "it is not defined here"),
        ({"same_disks": False}, "other disk files"),
        ({"lease": None}, "holds no lease"),
        ({"lease": _lease(LIVE, None)}, "does not say where the VM runs"),
        ({"owners": {"hosta", "hostc"}, "lease": _lease(EXPIRED)}, "several hosts"),
    ],
)
def test_refusals_say_whose_it_is_and_why(kwargs: dict[str, object], why: str) -> None:
    decision = _decide(**kwargs)  # type: ignore[arg-type]
    assert decision.verdict is Verdict.REFUSE and why in decision.reason
    assert "belongs to host hosta" in decision.reason


@pytest.mark.parametrize(
    ("state", "lease", "queue_for"),
    [
        (None, _lease(LIVE, {VM}), "hosta"),  # runs there, not defined here
        (VmState.STOPPED, _lease(LIVE, {VM}), "hosta"),  # runs there, stopped here
        (VmState.STOPPED, _lease(EXPIRED, {VM}), "hosta"),  # its registered owner is down
        (VmState.RUNNING, _lease(LIVE, {VM}), None),  # running on two hosts: settling
        (VmState.RUNNING, None, None),  # an owner that never registered
    ],
)
def test_a_refusal_names_the_registered_owner_to_queue_a_request_for(
    state: VmState | None, lease: HostLease | None, queue_for: str | None
) -> None:
    decision = _decide(state=state, lease=lease)
    assert decision.verdict is Verdict.REFUSE and decision.queue_for == queue_for
    live = lease is not None and lease.live(NOW)
    assert decision.address is (lease.address if live and lease else None)
