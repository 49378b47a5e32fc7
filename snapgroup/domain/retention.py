"""Snapshot policies: which slot is due, which policy-made groups to keep (pure, UTC).

A *slot kind* is a label with its period: frequent (every N minutes), hourly, daily,
weekly (from Monday 00:00) and monthly (from the 1st, 00:00), all in UTC whatever the
host's zone. A period's *bucket* is the run of time between two of its boundaries.

Taking: a slot kind is due at `now` when the VM's newest policy-made group is older than
the last boundary at or before `now`. A host that was down for days therefore takes ONE
group when it comes back (every kind is due once), and a clock stepped back takes nothing
until it passes the newest group's time again: groups are always taken in time order.

Keeping (the sanoid way, one group satisfies every slot it falls in): for each slot kind
with count N, the first group of each of the N newest buckets that hold a group is kept;
the kept set is the union over kinds, and several policies on one VM combine by taking
the largest count of each kind. Groups a person made, protected groups and groups a clone
reads are never pruned (they still fill the buckets they fall in).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from operator import attrgetter
from typing import NamedTuple

from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.validate import is_short_name

# Finest first: the name of a group that takes several slots carries the coarsest.
LABELS = ("frequent", "hourly", "daily", "weekly", "monthly")
_FIXED_MINUTES = {"hourly": 60, "daily": 1440, "weekly": 10080}
# 1970-01-01 was a Thursday: weeks counted from Monday 1969-12-29 00:00 UTC.
_WEEK_SHIFT = 3 * 1440
CONSISTENCIES = ("auto", "application", "crash")
NAME_PREFIX = "auto-"


class SlotKind(NamedTuple):
    """A label and its period; `every` (minutes) is meaningful for frequent only.
    (A tuple: it keys the dicts of every pass, and a tuple hashes fastest.)"""

    label: str
    every: int = 0

    def __str__(self) -> str:
        return f"frequent/{self.every}m" if self.label == "frequent" else self.label


@dataclass(frozen=True)
class Retention:
    """One policy's keep counts. A label with count 0 takes no slots."""

    frequent: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    every: int = 15  # minutes between frequent groups

    @cached_property
    def counts(self) -> dict[SlotKind, int]:
        return {_kind(label, self.every): n for label in LABELS if (n := getattr(self, label)) > 0}


@dataclass(frozen=True)
class Policy:
    """A named policy. `vms`: the VMs (names or UUIDs) it covers; None means all VMs,
    less `exclude`."""

    name: str
    retention: Retention
    vms: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    consistency: str = "auto"
    min_free_percent: float | None = None
    with_memory: bool = False  # memory groups (the VM's running state too)

    def covers(self, vm_uuid: str, vm_name: str) -> bool:
        ids = {vm_uuid, vm_name}
        if self.vms is None:
            return not ids.intersection(self.exclude)
        return bool(ids.intersection(self.vms))


@dataclass(frozen=True)
class AutoGroup:
    """A group as retention sees it. `policies`: the policy marks (empty: made by hand).
    `taken` is held as aware UTC (a naive time is taken as UTC)."""

    uuid: str
    taken: datetime
    policies: frozenset[str] = field(default_factory=frozenset)
    protected: bool = False
    pinned: bool = False  # a clone reads it
    name: str = field(default="", compare=False)  # for reports
    minute: int = field(init=False, repr=False, compare=False)  # since the epoch
    month: int = field(init=False, repr=False, compare=False)  # monthly bucket

    def __post_init__(self) -> None:
        # once here rather than at every bucket a pass computes
        taken = utc(self.taken)
        object.__setattr__(self, "taken", taken)
        object.__setattr__(self, "minute", _epoch_minute(taken))
        object.__setattr__(self, "month", taken.year * 12 + taken.month - 1)


@dataclass(frozen=True)
class VmRef:
    """A VM a pass works on: its UUID and the name libvirt gives it now."""

    uuid: str
    name: str


@dataclass(frozen=True)
class Take:
    """A group to take now: the slots it fills, the label in its name, its name."""

    slots: tuple[SlotKind, ...]
    label: str
    name: str
    policies: tuple[str, ...]  # the policies whose slots it fills (its marks)


def _kind(label: str, every: int) -> SlotKind:
    return SlotKind(label, every if label == "frequent" else 0)


def combined_consistency(policies: Iterable[Policy]) -> str:
    """Several policies on one VM: the strongest asked for (application > auto > crash)."""
    asked = {p.consistency for p in policies}
    return next((c for c in ("application", "auto") if c in asked), "crash")


def combined_with_memory(policies: Iterable[Policy]) -> bool:
    """Several policies on one VM: a memory group when any asks for one (it holds what a
    disk-only group does, and the running state too)."""
    return any(p.with_memory for p in policies)


def combined_min_free(policies: Iterable[Policy]) -> float | None:
    """Several policies on one VM: the strictest space guard."""
    return max(
        (p.min_free_percent for p in policies if p.min_free_percent is not None), default=None
    )


def validate_policy(policy: Policy) -> None:
    """Raise InvalidArgument unless the policy can be stored and run."""
    if not is_short_name(policy.name):
        raise InvalidArgument(
            f"policy name {policy.name!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    r = policy.retention
    for label in LABELS:
        n = getattr(r, label)
        if n < 0:
            raise InvalidArgument(f"policy {policy.name}: --{label} must be >= 0, not {n}")
    if not r.counts:
        raise InvalidArgument(
            f"policy {policy.name}: keeps nothing (give --frequent, --hourly, --daily, "
            "--weekly or --monthly a count above 0)"
        )
    # Periods that divide a day keep frequent buckets aligned with hours and days.
    if r.every < 1 or 1440 % r.every:
        raise InvalidArgument(
            f"policy {policy.name}: --every {r.every}: minutes that divide a day (1440), "
            "e.g. 5, 10, 15, 30, 60"
        )
    if policy.consistency not in CONSISTENCIES:
        raise InvalidArgument(
            f"policy {policy.name}: consistency {policy.consistency!r}: one of "
            + ", ".join(CONSISTENCIES)
        )
    if policy.with_memory and policy.consistency == "application":
        raise InvalidArgument(
            f"policy {policy.name}: --with-memory does not freeze the guest (it would "
            "resume frozen): use --consistency auto or crash"
        )
    if policy.min_free_percent is not None and not 0 <= policy.min_free_percent < 100:
        raise InvalidArgument(
            f"policy {policy.name}: --min-free-percent {policy.min_free_percent}: 0 to <100"
        )
    if policy.vms is not None and policy.exclude:
        raise InvalidArgument(f"policy {policy.name}: --exclude goes with --all only")
    if policy.vms is not None and not policy.vms:
        raise InvalidArgument(f"policy {policy.name}: name at least one VM, or --all")


def utc(t: datetime) -> datetime:
    """Aware UTC. A naive time is UTC (the store's SQLite columns come back naive):
    never the host's zone, whose DST would shift it."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _epoch_minute(t: datetime) -> int:
    return int(utc(t).timestamp()) // 60


def bucket(kind: SlotKind, t: datetime) -> int:
    """The number of kind's period that `t` falls in (increasing with time)."""
    u = utc(t)
    return _bucket(kind, u, _epoch_minute(u))


def _bucket(kind: SlotKind, u: datetime, minute: int) -> int:
    length, shift = _divisor(kind)
    return u.year * 12 + u.month - 1 if length == 0 else (minute + shift) // length


def _divisor(kind: SlotKind) -> tuple[int, int]:
    """(minutes, shift): bucket = (epoch minute + shift) // minutes; (0, 0): monthly."""
    if kind.label == "monthly":
        return 0, 0
    if kind.label == "frequent":
        return kind.every, 0
    return _FIXED_MINUTES[kind.label], _WEEK_SHIFT if kind.label == "weekly" else 0


def period_start(kind: SlotKind, t: datetime) -> datetime:
    """The last boundary of kind's period at or before `t` (UTC)."""
    u = utc(t)
    if kind.label == "monthly":
        return datetime(u.year, u.month, 1, tzinfo=UTC)
    minutes = kind.every if kind.label == "frequent" else _FIXED_MINUTES[kind.label]
    shift = _WEEK_SHIFT if kind.label == "weekly" else 0
    start = ((_epoch_minute(u) + shift) // minutes * minutes - shift) * 60
    return datetime.fromtimestamp(start, UTC)


def period_length(kind: SlotKind, t: datetime) -> timedelta:
    """The length of the period `t` falls in (months differ)."""
    if kind.label != "monthly":
        return timedelta(minutes=kind.every or _FIXED_MINUTES[kind.label])
    start = period_start(kind, t)
    following = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
    return following - start


_by_time = attrgetter("taken", "uuid")
_taken = attrgetter("taken")


def combined_counts(retentions: Iterable[Retention]) -> dict[SlotKind, int]:
    """Several policies on one VM: the largest count of each slot kind."""
    out: dict[SlotKind, int] = {}
    for r in retentions:
        for kind, n in r.counts.items():
            out[kind] = max(n, out.get(kind, 0))
    return out


def policy_groups(groups: Iterable[AutoGroup], policies: Iterable[str]) -> list[AutoGroup]:
    """The groups a policy covering the VM made. A group of a removed policy, or of one
    that no longer covers the VM, is left alone like one made by hand."""
    names = frozenset(policies)
    return [g for g in groups if not names.isdisjoint(g.policies)]


def due(now: datetime, counts: dict[SlotKind, int], groups: Sequence[AutoGroup]) -> list[SlotKind]:
    """The slot kinds due at `now`, given the VM's policy-made groups."""
    newest = max(map(_taken, groups), default=None)
    return sorted(
        (k for k in counts if newest is None or newest < period_start(k, now)),
        key=lambda k: LABELS.index(k.label),
    )


def group_name(label: str, now: datetime) -> str:
    """`auto-hourly-2026-12-01T14:00Z`: the label and the UTC minute it was taken."""
    return f"{NAME_PREFIX}{label}-{utc(now):%Y-%m-%dT%H:%MZ}"


def plan_take(
    now: datetime, policies: Sequence[Policy], groups: Sequence[AutoGroup]
) -> Take | None:
    """The group to take now for a VM under `policies`, or None when nothing is due.
    `groups`: all the VM's groups (those of other policies and hand-made ones are
    ignored)."""
    mine = policy_groups(groups, (p.name for p in policies))
    counts = combined_counts(p.retention for p in policies)
    slots = due(now, counts, mine)
    if not slots:
        return None
    label = slots[-1].label
    names = tuple(sorted(p.name for p in policies if any(k in slots for k in p.retention.counts)))
    return Take(tuple(slots), label, group_name(label, now), names)


def kept(counts: dict[SlotKind, int], groups: Sequence[AutoGroup]) -> set[str]:
    """The uuids the keep counts keep among `groups` (policy-made, one VM): per kind,
    the first group of each of the newest `count` buckets that hold one."""
    newest_first = [(g.minute, g.month, g.uuid) for g in sorted(groups, key=_by_time, reverse=True)]
    keep: set[str] = set()
    for kind, count in counts.items():
        # Walked newest first, a bucket's first group is the last one met in it; the
        # walk stops after `count` buckets (a pass costs the kept window, not the VM's
        # whole history of protected and pinned groups).
        length, shift = _divisor(kind)
        current: int | None = None
        first: str | None = None
        found = 0
        for minute, month, uuid in newest_first:
            b = month if length == 0 else (minute + shift) // length
            if b != current:
                if first is not None:
                    keep.add(first)
                    found += 1
                    if found == count:
                        first = None
                        break
                current = b
            first = uuid
        if first is not None:
            keep.add(first)
    return keep


def plan_prune(policies: Sequence[Policy], groups: Sequence[AutoGroup]) -> list[AutoGroup]:
    """The VM's groups to delete, oldest first: policy-made by a policy covering the VM,
    beyond every keep count, neither protected nor read by a clone."""
    mine = policy_groups(groups, (p.name for p in policies))
    keep = kept(combined_counts(p.retention for p in policies), mine)
    doomed = [g for g in mine if g.uuid not in keep and not g.protected and not g.pinned]
    return sorted(doomed, key=_by_time)


# policy status: how stale each slot's newest group is
OK, WARN, CRIT = "OK", "WARN", "CRIT"


@dataclass(frozen=True)
class SlotStatus:
    kind: SlotKind
    newest: datetime | None
    age: timedelta | None
    state: str

    @property
    def exit_code(self) -> int:
        return {OK: 0, WARN: 1, CRIT: 2}[self.state]


def slot_status(now: datetime, kind: SlotKind, groups: Sequence[AutoGroup]) -> SlotStatus:
    """WARN when the newest policy-made group is older than 1.5 periods, CRIT past 2
    (or none at all). WARN too when it is more than a period ahead of `now`: the clock
    went back, and nothing is taken until it passes that group's time again."""
    newest = max((g.taken for g in groups), default=None)
    if newest is None:
        return SlotStatus(kind, None, None, CRIT)
    age = utc(now) - newest
    period = period_length(kind, now)
    state = CRIT if age > 2 * period else WARN if age > 1.5 * period or -age > period else OK
    return SlotStatus(kind, newest, age, state)


def vm_status(
    now: datetime, policies: Sequence[Policy], groups: Sequence[AutoGroup]
) -> list[SlotStatus]:
    """`policy status` for one VM: each slot kind its policies keep, finest first."""
    mine = policy_groups(groups, (p.name for p in policies))
    kinds = sorted(combined_counts(p.retention for p in policies), key=_finest_first)
    return [slot_status(now, k, mine) for k in kinds]


def _finest_first(kind: SlotKind) -> tuple[int, int]:
    return LABELS.index(kind.label), kind.every
