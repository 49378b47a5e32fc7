"""A VM's owner in a store shared by several hosts, decided (domain/ownership.py) from
its rows, this host's libvirt and the owner's lease; and a take-over, done in the
caller's transaction: the VM's rows move to this host, journaled as a 'takeover'
operation, and this host's lease now reports the VM if it runs here.
OpContext.check_owner is the one caller."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from snapgroup.domain.errors import NotFound
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.ownership import Decision, Verdict, decide
from snapgroup.ops.host_lease import lease_seconds
from snapgroup.ops.notices import warn
from snapgroup.ports import Hypervisor
from snapgroup.store.hosts import HostRepo
from snapgroup.store.repo import Repo
from snapgroup.store.tables import VolumeRow


def domain_here(hv: Hypervisor, vm_uuid: str) -> DomainInfo | None:
    """The VM in this host's libvirt; None when it is not defined here."""
    try:
        return hv.lookup(vm_uuid)
    except NotFound:
        return None


def owner_decision(
    hv: Hypervisor,
    repo: Repo,
    *,
    vm_uuid: str,
    host: str,
    now: datetime,
    volumes: Sequence[VolumeRow] = (),
    domain: DomainInfo | None = None,
    looked_up: bool = False,
) -> Decision:
    """Mine, take over or refuse. Reads nothing more than the VM's owners when this
    host is the only one (every operation's path); `volumes`: the VM's, when the
    caller has just read them all; `domain` with `looked_up`: the VM in this host's
    libvirt as the caller found it (None: not defined here)."""
    if volumes:
        owners = {v.host for v in volumes if v.host is not None} | repo.group_hosts(vm_uuid)
    else:
        owners = repo.vm_hosts(vm_uuid)
    if not owners - {host}:
        return Decision(Verdict.MINE)
    if not looked_up:
        domain = domain_here(hv, vm_uuid)
    recorded = {v.install_path for v in volumes or repo.volumes_of_vm(vm_uuid) if v.attached}
    others = sorted(owners - {host})
    return decide(
        vm_uuid=vm_uuid,
        vm_name=domain.name if domain is not None else "",
        here=host,
        owners=owners,
        state_here=domain.state if domain is not None else None,
        lease=HostRepo(repo.session).lease(others[0]) if len(others) == 1 else None,
        same_disks=domain is not None and any(d.path in recorded for d in domain.disks),
        now=now,
    )


def take_over(
    repo: Repo,
    decision: Decision,
    *,
    vm_uuid: str,
    host: str,
    now: datetime,
    new_uuid: Callable[[], str],
    running_here: bool,
) -> str:
    """The VM's rows moved to `host` in the caller's transaction; the warning said
    (ops/notices.py: beside the result of the command or job that caused it)."""
    assert decision.verdict is Verdict.TAKE_OVER and decision.owner is not None
    message = f"VM {vm_uuid} taken over from host {decision.owner}: {decision.reason}"
    hosts = HostRepo(repo.session)
    hosts.move_vm(
        vm_uuid,
        from_host=decision.owner,
        to_host=host,
        now=now,
        op_uuid=new_uuid(),
        reason=message,
    )
    # This host's report names the VM at once: its old owner, looking now, finds it
    # running here rather than taking it back.
    mine = hosts.lease(host)
    running = set(mine.running or ()) if mine is not None else set()
    if running_here:
        running.add(vm_uuid)
    expires = now + timedelta(seconds=lease_seconds())
    if mine is not None and mine.expires > expires:
        expires = mine.expires
    hosts.renew(host, now=now, expires=expires, running=running)
    warn(message)  # in the result of the command or job that caused it
    return message
