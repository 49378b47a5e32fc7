"""Which host owns a VM in a store shared by several (pure).

The host whose libvirt runs a VM (or, for a stopped VM, defines it) owns its rows:
volumes, groups (and through them refs and snapshots), unfinished operations. Each host
holds a lease in the store, renewed while it operates or serves, and with it reports
which of its VMs run there. When a VM shows up on another host and its owner no longer
runs it, the new host takes it over; while both run it (a migration in flight, a split
brain) every host refuses it. No host asks another's libvirt: the lease is the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from snapgroup.domain.errors import InvalidArgument, NotFound, OperationError, SnapgroupError
from snapgroup.domain.models import VmState

DEFAULT_LEASE_SECONDS = 60.0


@dataclass(frozen=True)
class HostLease:
    """A host's row in the registry: until when its lease holds, when it last renewed
    it, and which of its VMs ran there then (None: it did not say)."""

    name: str
    expires: datetime
    heartbeat: datetime
    running: frozenset[str] | None = None
    address: str | None = None  # its `serve`, when it serves
    retired: datetime | None = None  # declared down for good (`snapgroup hosts --retire`)

    def live(self, now: datetime) -> bool:
        return now < self.expires

    def runs(self, vm_uuid: str) -> bool:
        return self.running is not None and vm_uuid in self.running


class Verdict(StrEnum):
    MINE = "mine"
    TAKE_OVER = "take-over"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    owner: str | None = None  # the other host, when there is one
    reason: str = ""  # why: the take-over's warning, or the refusal's message
    settling: bool = False  # refused for now: running on two hosts (a migration, maybe)
    address: str | None = None  # refused: the owner's `serve`, when it serves (lease live)
    queue_for: str | None = None  # refused: the one owner, a registered host (its lease row)


class OwnedElsewhere(OperationError):
    """SYS.1006: the VM is another host's. `address`: that host's `serve` when it serves
    and its lease is live: a REST request for the VM is forwarded there. `queue_for`:
    the one host that owns it, registered (live or not), when the VM is not settling:
    a REST request it cannot be forwarded is queued for it (rest/queue.py)."""

    def __init__(
        self, details: str, *, owner: str | None, address: str | None, queue_for: str | None = None
    ) -> None:
        super().__init__(details)
        self.owner, self.address, self.queue_for = owner, address, queue_for


def decide(
    *,
    vm_uuid: str,
    vm_name: str = "",
    here: str,
    owners: set[str],
    state_here: VmState | None,
    lease: HostLease | None,
    same_disks: bool,
    now: datetime,
) -> Decision:
    """Whether host `here` may operate on the VM whose rows name `owners`.
    `state_here`: the VM in this host's libvirt (None: not defined here); `lease`: the
    other owner's registry row (None: it has none); `same_disks`: this host's
    definition opens files the store records for the VM (shared storage), not another
    VM's that happens to share the UUID."""
    decision = _decide(
        vm_uuid=vm_uuid,
        vm=f"{vm_name} ({vm_uuid})" if vm_name else vm_uuid,
        here=here,
        owners=owners,
        state_here=state_here,
        lease=lease,
        same_disks=same_disks,
        now=now,
    )
    if decision.verdict is not Verdict.REFUSE or lease is None or decision.owner != lease.name:
        return decision
    queue_for = None if decision.settling or lease.retired is not None else lease.name
    return replace(
        decision, address=lease.address if lease.live(now) else None, queue_for=queue_for
    )


def _decide(
    *,
    vm_uuid: str,
    vm: str,
    here: str,
    owners: set[str],
    state_here: VmState | None,
    lease: HostLease | None,
    same_disks: bool,
    now: datetime,
) -> Decision:
    others = owners - {here}
    if not others:
        return Decision(Verdict.MINE)
    if len(others) > 1:
        return _refuse(vm, here, others, "its rows name several hosts")
    (owner,) = others
    if state_here is None:
        return _refuse(vm, here, others, "it is not defined here")
    if not same_disks:
        return _refuse(
            vm,
            here,
            others,
            "this host's definition opens other disk files than the store records (a stale "
            "definition, or not on shared storage)",
        )
    if lease is None:
        return _refuse(
            vm,
            here,
            others,
            f"host {owner} holds no lease in the store (it has not run "
            "this snapgroup yet): run any snapgroup command there first",
        )
    running_here = state_here.is_live
    if lease.retired is not None and not lease.live(now):
        return Decision(
            Verdict.TAKE_OVER,
            owner,
            f"host {owner} was retired at {lease.retired.isoformat(timespec='seconds')} "
            f"(snapgroup hosts --retire) and the VM "
            f"{'runs' if running_here else 'is defined and stopped'} here",
        )
    seen = lease.heartbeat.isoformat(timespec="seconds")
    if lease.live(now):
        if lease.runs(vm_uuid):
            if running_here:
                return _refuse(
                    vm,
                    here,
                    others,
                    "a migration in flight or a split brain; retry once it settles",
                    prefix=f"VM {vm} is running on two hosts, {owner} (reported at {seen}) "
                    f"and this one ({here})",
                )
            return _refuse(vm, here, others, f"it runs there (reported at {seen})")
        if lease.running is None:
            return _refuse(vm, here, others, "its live lease does not say where the VM runs")
        return Decision(
            Verdict.TAKE_OVER,
            owner,
            f"host {owner} reports it not running (at {seen}) and it "
            f"{'runs' if running_here else 'is defined and stopped'} here",
        )
    expired = lease.expires.isoformat(timespec="seconds")
    if not running_here and lease.runs(vm_uuid):
        return _refuse(
            vm,
            here,
            others,
            f"it was running on {owner} at its last report ({seen}) and "
            f"{owner}'s lease has expired since ({expired}): {owner} may be down, or alive "
            "and silent; start the VM here to take it over",
        )
    return Decision(
        Verdict.TAKE_OVER,
        owner,
        f"host {owner}'s lease expired at {expired} and the VM "
        f"{'runs' if running_here else 'is defined and stopped'} here",
    )


def _refuse(
    vm: str, here: str, others: set[str], why: str, *, prefix: str | None = None
) -> Decision:
    hosts = ", ".join(sorted(others))
    head = prefix or f"VM {vm} belongs to host {hosts}, not to this host ({here})"
    return Decision(Verdict.REFUSE, hosts, f"{head}: {why}", settling=prefix is not None)


def retire_refusal(
    lease: HostLease | None, *, name: str, here: str, owned: set[str], now: datetime, force: bool
) -> SnapgroupError | None:
    """Why host `name` may not be retired now (None: it may). Its lease must have
    expired; its last report must name none of the VMs it owns as running (`force`:
    the operator's word that it is down for good, whatever it last said)."""
    if name == here:
        return InvalidArgument(f"host {name} is this host: a host retires another, never itself")
    if lease is None:
        if owned:  # rows from before the registry: nothing to retire, nothing to wait for
            return OperationError(
                f"host {name} holds no lease in the store: it has not run this snapgroup "
                "(run any snapgroup command there once)"
            )
        return NotFound(f"no host {name} in the store (`snapgroup hosts` lists them)")
    if lease.live(now):
        return OperationError(
            f"host {name}'s lease is live until {lease.expires.isoformat(timespec='seconds')}: "
            "it is up (a host is retired once it is down for good and its lease has expired)"
        )
    if force:
        return None
    seen = lease.heartbeat.isoformat(timespec="seconds")
    if lease.running is None and owned:
        return OperationError(
            f"host {name}'s last report ({seen}) did not say which VMs ran there: it may "
            "run some of its VMs (--force, if it is down for good)"
        )
    running = sorted(owned & (lease.running or frozenset()))
    if running:
        return OperationError(
            f"host {name} runs VMs by its last report ({seen}): {', '.join(running)}; start "
            "them on the host that defines them now (it takes them over), or --force if "
            f"{name} is down for good"
        )
    return None


@dataclass(frozen=True)
class HostView:
    """A host as `snapgroup hosts` shows it: its lease (None: it holds none, its rows
    predate the registry), the VMs the store records as its own and how many REST
    requests are queued for it (its `serve` runs them)."""

    name: str
    lease: HostLease | None
    vms: tuple[str, ...]
    live: bool
    queued: int = 0

    def to_dict(self) -> dict[str, object]:
        lease = self.lease
        return {
            "name": self.name,
            "address": lease.address if lease else None,
            "leaseExpires": lease.expires.isoformat() if lease else None,
            "heartbeat": lease.heartbeat.isoformat() if lease else None,
            "live": self.live,
            "running": sorted(lease.running) if lease and lease.running is not None else None,
            "retired": lease.retired.isoformat() if lease and lease.retired else None,
            "vmInstanceUuids": list(self.vms),
            "queuedRequests": self.queued,
        }


def host_views(
    leases: list[HostLease],
    vms: dict[str, set[str]],
    now: datetime,
    queued: dict[str, int] | None = None,
) -> list[HostView]:
    """Every host with a lease, with VMs or with requests queued for it, by name."""
    by_name = {lease.name: lease for lease in leases}
    queued = queued or {}
    return [
        HostView(
            name,
            by_name.get(name),
            tuple(sorted(vms.get(name, ()))),
            name in by_name and by_name[name].live(now),
            queued.get(name, 0),
        )
        for name in sorted(by_name.keys() | vms.keys() | queued.keys())
    ]
